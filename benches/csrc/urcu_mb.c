/*
 * liburcu mb flavour shim for the peer benchmarks.
 *
 * _LGPL_SOURCE inlines liburcu's read side, as a C user of liburcu gets it.
 * mb_read_pairs must be called from a thread registered with the mb flavour.
 */
#define _LGPL_SOURCE
#include <stdint.h>
#include <urcu/urcu-mb.h>

void mb_register_thread(void)
{
	urcu_mb_register_thread();
}

void mb_unregister_thread(void)
{
	urcu_mb_unregister_thread();
}

/* n empty read-side critical sections; returns n. */
uint64_t mb_read_pairs(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		urcu_mb_read_lock();
		cmm_barrier();
		urcu_mb_read_unlock();
	}
	return n;
}
