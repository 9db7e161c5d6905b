/* aod_ring.h - the pinned ring and drop counter every aodv2 tracer writes to.
 *
 * Include after aod_event.h in a bcc program. Needs AOD_RING_PIN, AOD_DROPS_PIN
 * (string literals) and AOD_RING_PAGES from aod/tracer.py's cflags.
 * bcc 0.26 creates or reuses a ring pinned through a "maps/ringbuf:<path>"
 * section whose struct has the members of its BPF_RINGBUF_OUTPUT.
 */
#ifndef AOD_RING_H
#define AOD_RING_H

#ifndef AOD_RING_PAGES
#define AOD_RING_PAGES 1024
#endif

struct events_table_t {
	int key;
	u32 leaf;
	int (*ringbuf_output)(void *, u64, u64);
	void *(*ringbuf_reserve)(u64);
	void (*ringbuf_discard)(void *, u64);
	void (*ringbuf_submit)(void *, u64);
	u64 (*ringbuf_query)(u64);
	u32 max_entries;
};
__attribute__((section("maps/ringbuf:" AOD_RING_PIN)))
struct events_table_t events = { .max_entries = AOD_RING_PAGES * PAGE_SIZE };

BPF_TABLE_PINNED("percpu_array", u32, u64, drops, 1, AOD_DROPS_PIN);

/* one record into the ring; a full ring counts a drop the core reports */
static __always_inline void aod_emit(struct aod_event *ev)
{
	if (events.ringbuf_output(ev, sizeof(*ev), 0) != 0) {
		u32 zero = 0;
		u64 *d = drops.lookup(&zero);
		if (d)
			(*d)++;
	}
}

#endif /* AOD_RING_H */
