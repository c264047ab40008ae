/*
 * liburcu qsbr flavour shim for the peer benchmarks.
 *
 * _LGPL_SOURCE inlines liburcu's read side, as a C user of liburcu gets it.
 * qsbr_read_pairs must be called from a thread registered with the qsbr flavour.
 */
#define _LGPL_SOURCE
#include <stdint.h>
#include <urcu/urcu-qsbr.h>

void qsbr_register_thread(void)
{
	urcu_qsbr_register_thread();
}

void qsbr_unregister_thread(void)
{
	urcu_qsbr_unregister_thread();
}

/* n empty read-side critical sections; returns n. */
uint64_t qsbr_read_pairs(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		urcu_qsbr_read_lock();
		cmm_barrier();
		urcu_qsbr_read_unlock();
	}
	return n;
}

/*
 * n iterations of the same loop with nothing but the compiler barrier: the floor that
 * qsbr_read_pairs runs at, since the qsbr read side compiles to nothing.
 */
uint64_t empty_pairs(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		cmm_barrier();
	return n;
}
