/*
 * liburcu memb flavour shim for the peer benchmarks.
 *
 * _LGPL_SOURCE inlines liburcu's read side, as a C user of liburcu gets it.
 * Every function here except the register/unregister pair must be called
 * from a thread registered with the memb flavour.
 */
#define _LGPL_SOURCE
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <urcu/urcu-memb.h>

void memb_register_thread(void)
{
	urcu_memb_register_thread();
}

void memb_unregister_thread(void)
{
	urcu_memb_unregister_thread();
}

/* n empty read-side critical sections; returns n. */
uint64_t memb_read_pairs(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		urcu_memb_read_lock();
		cmm_barrier();
		urcu_memb_read_unlock();
	}
	return n;
}

/* Empty read-side critical sections until *stop becomes true. */
void memb_busy_reader(const bool *stop)
{
	while (!__atomic_load_n(stop, __ATOMIC_RELAXED)) {
		urcu_memb_read_lock();
		cmm_barrier();
		urcu_memb_read_unlock();
	}
}

void memb_synchronize(void)
{
	urcu_memb_synchronize_rcu();
}

struct node {
	struct rcu_head head;
	uint64_t payload;
};

static void free_node(struct rcu_head *head)
{
	free(caa_container_of(head, struct node, head));
}

/* n call_rcu()s of malloc'ed nodes freed by their callback, then rcu_barrier(). */
void memb_call_rcu_n(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		struct node *node = malloc(sizeof(*node));

		if (!node)
			abort();
		node->payload = i;
		urcu_memb_call_rcu(&node->head, free_node);
	}
	urcu_memb_barrier();
}

struct probe {
	struct rcu_head head;
	bool done;
};

static void mark_done(struct rcu_head *head)
{
	struct probe *probe = caa_container_of(head, struct probe, head);

	__atomic_store_n(&probe->done, true, __ATOMIC_RELEASE);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Nanoseconds from one call_rcu() until its callback has run, spinning. */
uint64_t memb_call_rcu_isolated_latency_ns(void)
{
	struct probe probe = { .done = false };
	uint64_t start = now_ns();

	urcu_memb_call_rcu(&probe.head, mark_done);
	while (!__atomic_load_n(&probe.done, __ATOMIC_ACQUIRE))
		caa_cpu_relax();
	return now_ns() - start;
}
