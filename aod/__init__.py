"""aodv2: always-on diagnostics for Linux SMB/CIFS clients.

Data flow: ring (ring.py) -> dispatch (dispatch.py) -> detect (detect.py)
-> collect (collect.py, actions.py) -> retain (retain.py); daemon.py wires
the threads together under systemd.
"""

__version__ = "0.6.0"
