// Thin wrappers over the futex(2) system call for words in shared memory.
// The words are never FUTEX_PRIVATE: the kernel must key them by the shared page, not by one
// process's address, so that a waiter in one process is woken by a publisher in another
// (research/rings.md section 3).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace shmbus {

enum class FutexWaitResult { kWoken, kValueChanged, kTimedOut, kInterrupted };

// Sleeps while *word == expected, at most `timeout` (negative: no limit).
FutexWaitResult futex_wait(std::atomic<uint32_t>* word, uint32_t expected,
                           std::chrono::nanoseconds timeout);

// Wakes every sleeper on `word`; returns how many were woken.
int futex_wake_all(std::atomic<uint32_t>* word);

// Makes every store issued so far by any thread of any process that registered with
// register_process_for_barriers() visible before this returns (membarrier, global
// expedited). Used when a reader links a doorbell to a ring: publishers may then skip a
// full fence on every commit. Throws if the kernel lacks membarrier.
void process_wide_barrier();
void register_process_for_barriers();

}  // namespace shmbus
