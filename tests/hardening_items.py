"""Every item of the hardening review (issue 14) and of the issue-15 hardening (the matrix: pin
directories, the zstd program backend) with the tests that prove it, for docs/faults.md.

tests/faultreport.py renders this table with each test's outcome from the same run;
tests/test_hardening_items.py fails when a listed test does not exist or a hardening test is
listed nowhere. VM parts are those of tests/vm/guest/faults_harden.py (make vm-faults).
"""

from __future__ import annotations

from typing import List, NamedTuple, Tuple


class Item(NamedTuple):
    section: str
    text: str
    tests: Tuple[str, ...]  # "tests/FILE.py::function"
    vm: Tuple[str, ...] = ()


D, R, V, C = "tests/test_harden_dirs.py", "tests/test_harden_ring.py", "tests/test_harden_view.py", \
    "tests/test_harden_core.py"
P, Z = "tests/test_harden_matrix_pins.py", "tests/test_harden_matrix_zstd.py"


def _t(file: str, *names: str) -> Tuple[str, ...]:
    return tuple(f"{file}::{n}" for n in names)


ITEMS: List[Item] = [
    # ---- output and state directories
    Item("dirs", "an output or state directory another user owns or can write (or any parent) is refused; "
         "sticky root parents and system accounts follow a stated rule; a bad metrics dir turns metrics off",
         _t(D, "test_output_dir_of_another_user_is_refused", "test_unsafe_parents_are_refused",
            "test_sticky_root_parent_and_system_account_metrics_dir_are_fine",
            "test_state_dir_of_another_user_is_refused",
            "test_metrics_dir_of_another_user_turns_metrics_off_not_the_core"),
         ("5_hostile_output_dir",)),
    Item("dirs", "stage files are created and filled relative to an open directory fd (O_NOFOLLOW, O_EXCL); "
         "no symlink is ever followed in the stage",
         _t(D, "test_swapped_stage_and_planted_symlinks_redirect_nothing",
            "test_stale_sweep_unlinks_a_symlinked_stage_name_only")),
    Item("dirs", "system paths (/, /etc, /tmp, /proc/self, /dev/null, /./etc/.) are refused as output_dir; "
         "the metrics path must end in .prom outside system dirs",
         _t(D, "test_check_config_refuses_system_paths", "test_config_load_normalizes_the_paths")),
    Item("dirs", "the core never changes the mode of a directory it did not create",
         _t(D, "test_core_never_touches_a_system_dir_or_the_mode_of_an_existing_one")),
    Item("dirs", "a FIFO (or symlink) at anomalies.jsonl, status.json or the metrics temp name never blocks "
         "or redirects the core",
         _t(D, "test_fifos_at_history_status_and_metrics_temp_do_not_block_the_core",
            "test_symlink_at_a_temp_name_or_history_is_never_followed"),
         ("6_fifo_history",)),
    Item("dirs", "missing parents are created with explicit modes under umask 000",
         _t(D, "test_missing_parents_get_explicit_modes_under_umask_0")),
    Item("dirs", "missing levels are created by a directory-fd walk: a symlink planted in a shared parent between "
         "the check and the mkdir redirects nothing; root's own symlinks in the path still work",
         _t(D, "test_symlink_planted_between_the_check_and_the_mkdir_redirects_nothing",
            "test_missing_levels_through_a_trusted_symlink_are_created_at_its_target")),
    # ---- ring
    Item("ring", "a misaligned or impossible producer position resyncs and is counted, never a crash loop",
         _t(R, "test_impossible_positions_resync_and_count", "test_position_reports_are_rate_limited",
            "test_misaligned_producer_while_core_runs",
            "test_misaligned_producer_costs_one_resync_not_every_later_record")),
    Item("ring", "a BUSY record never committed is skipped after a bounded wait, counted and reported",
         _t(R, "test_stalled_busy_record_is_skipped_after_the_bound",
            "test_busy_record_committed_within_the_bound_is_read",
            "test_block_of_stalled_records_skipped_at_once_later_ones_get_their_own_bound",
            "test_stalled_record_with_garbage_length_resyncs", "test_stall_bound_is_far_above_a_live_producer",
            "test_stalled_record_while_core_runs")),
    Item("ring", "a ring file truncated (or replaced) under the core is let go with one log line and "
         "reopened, no SIGBUS",
         _t(R, "test_truncated_ring_file_is_let_go_and_reopened", "test_writer_on_truncated_file_raises",
            "test_truncate_ring_file_under_running_core_process",
            "test_truncation_check_is_per_access_not_per_record",
            "test_ring_file_replaced_under_its_path_is_followed")),
    Item("ring", "future-stamped records are counted as bad records and never reach the window detectors",
         ("tests/test_faults.py::test_corrupt_and_foreign_records_while_core_runs",)),
    # ---- viewers and CLI input
    Item("viewers", "a deeply nested summary.json is one error in show and one UNREADABLE row in list",
         _t(V, "test_deeply_nested_summary_is_one_error_in_show_and_one_row_in_list")),
    Item("viewers", "a histogram count of 10**30 is noted, not an OverflowError",
         _t(V, "test_huge_histogram_count_is_noted_not_an_overflow")),
    Item("viewers", "an events.npy with a wrong dtype, shape or row count is refused before any allocation",
         _t(V, "test_hostile_events_npy_is_one_problem_within_bounds",
            "test_events_npy_reader_accepts_exactly_the_record_dtype")),
    Item("viewers", "GNU longname and PAX header bombs are refused early, in bounded memory",
         _t(V, "test_tar_header_bombs_are_refused_early")),
    Item("viewers", "--extract refuses a planted symlink or another user's DIR, caps members, creates nothing "
         "for a bad bundle",
         _t(V, "test_extract_refuses_a_symlink_planted_at_dir", "test_extract_refuses_another_users_dir",
            "test_extract_caps_members_and_creates_nothing",
            "test_extract_creates_no_dir_for_a_bundle_it_cannot_read")),
    Item("viewers", "--json never prints NaN/Infinity; bidi and control characters are escaped on terminals",
         _t(V, "test_json_has_no_nan_and_text_escapes_bidi_controls",
            "test_status_text_escapes_control_characters")),
    Item("viewers", "status --state-dir on a malformed or FIFO status.json is one line, non-zero exit",
         _t(V, "test_malformed_status_file_is_one_line", "test_status_file_that_is_a_fifo_does_not_block")),
    Item("viewers", "check-config quotes at most a short escaped prefix of a non-YAML file",
         _t(V, "test_check_config_of_a_non_yaml_file_quotes_no_line")),
    Item("viewers", "a 5000-digit integer names its key and line",
         _t(V, "test_check_config_names_the_key_of_a_huge_integer")),
    # ---- core behaviour
    Item("core", "a core restart (watchdog, crash, systemctl restart) leaves the tracers running; "
         "systemctl stop aodv2 stops them, start starts them",
         ("tests/test_unitstop.py::test_stop_hook_stops_tracers_only_on_a_stop_job",
          "tests/test_unitstop.py::test_stop_hook_never_fails_the_stop",
          "tests/test_unitstop.py::test_units_bind_the_tracers_to_the_core_by_the_hook_only"),
         ("4_core_restart",)),
    Item("core", "manual captures have their own budget; a full queue uses no budget",
         _t(C, "test_manual_captures_have_their_own_budget",
            "test_collect_after_many_manual_captures_still_captures_an_anomaly", "test_a_full_queue_uses_no_budget")),
    Item("core", "a timed-out read leaks no thread that recreates the stage; stale stages are removed and counted",
         _t(D, "test_hung_fifo_read_never_recreates_the_stage",
            "test_stuck_procfs_read_is_abandoned_counted_and_bounded",
            "test_stale_stages_are_removed_at_start_and_after_each_capture_and_counted")),
    Item("core", "a timed-out action's whole tree is killed (setsid grandchildren too, via a subreaper); "
         "a task that survives SIGKILL is counted, not waited for",
         _t(C, "test_timeout_kills_a_setsid_grandchild", "test_timeout_kills_a_daemonized_orphan_and_reaps_it",
            "test_a_zombie_in_the_tree_is_reaped_not_left_to_the_core",
            "test_leftovers_of_a_finished_command_are_killed", "test_the_sweep_never_reaps_children_it_did_not_kill",
            "test_a_process_that_survives_sigkill_is_counted_not_waited_for",
            "test_the_core_is_a_subreaper_and_kills_a_hung_actions_tree",
            "test_an_orphan_that_clears_its_tag_is_killed_too",
            "test_a_command_being_spawned_is_never_taken_for_an_orphan")
         + ("tests/test_upload.py::test_timeout_kills_a_setsid_grandchild_of_the_upload",)),
    Item("core", "the control socket bounds a request's size, depth and time (one deadline per request); "
         "no traceback in the log",
         _t(V, "test_control_deeply_nested_request_gets_an_error_reply",
            "test_control_request_that_trickles_is_cut_off_by_one_deadline",
            "test_control_unforeseen_error_is_one_log_line_and_a_reply")),
    Item("core", "redaction covers the forms mount.cifs, smbclient and their logs use, in linear time; "
         "a cut capture keeps whole lines",
         _t(C, "test_redaction_covers_the_forms_in_use", "test_a_secret_cut_by_the_capture_limit_does_not_pass",
            "test_cut_capture_keeps_whole_lines", "test_a_capped_file_read_never_keeps_half_a_secret",
            "test_redaction_of_pathological_lines_finishes")),
    Item("core", "tests and benchmarks never touch the host's /run/aodv2 (or other host state paths)",
         _t(C, "test_every_core_started_by_tests_and_bench_names_its_state_dir",
            "test_the_scan_catches_a_core_without_state_dir", "test_host_state_paths_are_refused_in_tests")),
    Item("core", "every verb's --help works (aodv2 tracer --help included)",
         _t(V, "test_every_verb_has_help")),
    # ---- matrix (issue 15): pin directories and the zstd program
    Item("matrix (issue 15)", "the chmod after pinning never follows a symlink swapped in for the fresh pin "
         "(tracer create_missing and the core's ring alike): the target keeps its mode, the start fails",
         _t(P, "test_chmod_after_pin_never_follows_a_symlink_swapped_in",
            "test_core_ring_chmod_never_follows_a_symlink_swapped_in")),
    Item("matrix (issue 15)", "a pin that appears between check_pinned and create_missing is checked before bcc "
         "opens it, not skipped as already pinned",
         _t(P, "test_entry_appearing_after_check_pinned_is_checked_before_bcc")),
    Item("matrix (issue 15)", "a pin directory another user owns or can write (a 0777 dir under a 1777 bpffs "
         "root), or a map another user pinned or owns, is refused",
         _t(P, "test_pin_dir_writable_by_others_is_refused", "test_pin_dir_of_another_user_is_refused",
            "test_kernel_map_pinned_by_another_user_is_refused")),
    Item("matrix (issue 15)", "a ring basename with - or + (allowed in ring.path) gets map names the kernel "
         "accepts, so the tracer still starts",
         _t(P, "test_map_names_are_ones_the_kernel_accepts", "test_kernel_ring_basename_with_a_dash")),
    Item("matrix (issue 15)", "gzip, xz or lzma frames after zstd frames are refused as corrupt by the zstd program "
         "as by the module (\"Unknown frame descriptor\"); every zstd and skippable frame form still reads the same",
         _t(Z, "test_cli_refuses_foreign_frames_as_the_module_does")),
    Item("matrix (issue 15)", "aodv2 check gives a bundle with a foreign (gzip) tail the same verdict on both zstd "
         "backends",
         _t(Z, "test_check_verdict_is_the_same_on_both_backends")),
]
