/* libshmbus's C API: Redis-style publish/subscribe through shared memory, for C programs and
 * for language bindings (Python, Node.js). It compiles as C11 and as C++, and it wraps the
 * C++ API of shmbus.hpp without changing its semantics, which that header documents.
 *
 *   shmbus_bus *bus;
 *   if (shmbus_connect(NULL, &bus) != SHMBUS_OK) { fputs(shmbus_last_error(), stderr); ... }
 *   shmbus_publish(bus, "chat:42", 7, "hello", 5, NULL);
 *
 *   shmbus_sub *sub;
 *   shmbus_sub_open(NULL, &sub);
 *   const char *patterns[] = {"chat:*"};
 *   size_t lengths[] = {6};
 *   shmbus_psubscribe(sub, patterns, lengths, 1);
 *   shmbus_message m;
 *   while (shmbus_next(sub, 1000000000, &m) == SHMBUS_OK) ...   (1 s timeout)
 *
 * Conventions:
 * - Every function returns an int status: SHMBUS_OK (0), SHMBUS_NO_MESSAGE (1: a timed-out
 *   shmbus_next, not an error) or a negative SHMBUS_E* code. The full text of the calling
 *   thread's last error (which names the limit or resource and the way out) is
 *   shmbus_last_error(); shmbus_strerror(code) names a code. No C++ exception ever leaves.
 * - Names (channels, patterns) are bytes with a length: 1 to 1024 bytes, NUL included.
 * - Handles are opaque; each *_open / *_connect has a matching *_close, which takes NULL.
 *   A handle is used by one thread at a time; different handles are independent.
 * - Messages from shmbus_next and shmbus_next_view point into the subscription and stay
 *   valid until its next call of shmbus_next*, a subscription change or its close.
 * - Timeouts and waits are in nanoseconds: 0 polls, a negative value waits without limit.
 */
#ifndef SHMBUS_SHMBUS_H
#define SHMBUS_SHMBUS_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define SHMBUS_API __attribute__((visibility("default")))
#else
#define SHMBUS_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define SHMBUS_VERSION_MAJOR 0
#define SHMBUS_VERSION_MINOR 1
#define SHMBUS_VERSION_PATCH 0

/* Status codes. The negative ones mirror shmbus::Errc (error.hpp). */
enum {
  SHMBUS_OK = 0,
  SHMBUS_NO_MESSAGE = 1,    /* shmbus_next*: nothing arrived within the timeout */
  SHMBUS_ENODAEMON = -1,    /* nothing answers on the control socket */
  SHMBUS_EDAEMONGONE = -2,  /* the daemon went away and did not come back in time */
  SHMBUS_EPROTOCOL = -3,    /* the daemon sent something this version cannot read */
  SHMBUS_EINVAL = -4,       /* a bad name, pattern, option or argument */
  SHMBUS_ETOOLARGE = -5,    /* a message larger than its channel's limit */
  SHMBUS_ELIMIT = -6,       /* a daemon limit (memory, channels, subscriptions) */
  SHMBUS_EWOULDBLOCK = -7,  /* a full back-pressure channel, and no wait allowed */
  SHMBUS_ETIMEDOUT = -8,    /* a back-pressure channel stayed full for the whole wait */
  SHMBUS_ESYSTEM = -9,      /* a system call failed (errno in the text) */
  SHMBUS_ECORRUPT = -10,    /* a channel's shared memory contradicts itself */
  SHMBUS_EPERMISSION = -11, /* an [[access]] rule of the daemon forbids it */
  SHMBUS_ENOMEM = -12,      /* out of memory in this process */
  SHMBUS_EREFUSED = -13,    /* a channel reopened after a restart was refused */
  SHMBUS_EINTERNAL = -14    /* an unexpected failure inside libshmbus (text says) */
};

/* A static description of a status code ("message too large", ...). */
SHMBUS_API const char* shmbus_strerror(int code);
/* The full text of the calling thread's last error; "" if none yet. Valid until the
 * thread's next failing call. */
SHMBUS_API const char* shmbus_last_error(void);
/* The library's version (the headers' SHMBUS_VERSION_* may be older or newer). */
SHMBUS_API void shmbus_version(int* major, int* minor, int* patch);

/* Where the daemon is. NULL fields (or a NULL options pointer) come from the environment:
 * $SHMBUS_BUS or "default"; $SHMBUS_SOCKET or /run/shmbus/<bus>.sock. */
typedef struct shmbus_options {
  size_t size;               /* sizeof(shmbus_options), set by shmbus_options_init */
  const char* bus;           /* bus name */
  const char* socket_path;   /* control socket */
  const char* client_name;   /* shown in the daemon's log; default: the program's name */
  int reconnect;             /* nonzero (default): reconnect after a daemon restart */
  int64_t reconnect_wait_ns; /* how long a call waits for the daemon to come back (5 s) */
} shmbus_options;
SHMBUS_API void shmbus_options_init(shmbus_options* options);

/* ---- Publishing ------------------------------------------------------------------- */

typedef struct shmbus_bus shmbus_bus;
typedef struct shmbus_channel shmbus_channel;
typedef struct shmbus_loan shmbus_loan;

SHMBUS_API int shmbus_connect(const shmbus_options* options, shmbus_bus** bus);
SHMBUS_API void shmbus_bus_close(shmbus_bus* bus);
/* PUBLISH: copies the payload into the channel (created if needed). *receivers (may be
 * NULL) gets what Redis's PUBLISH returns. */
SHMBUS_API int shmbus_publish(shmbus_bus* bus, const char* channel, size_t channel_len,
                              const void* data, size_t len, uint32_t* receivers);

/* A channel handle: the fast path for publishing to one channel often. */
SHMBUS_API int shmbus_channel_open(shmbus_bus* bus, const char* channel, size_t channel_len,
                                   shmbus_channel** out);
SHMBUS_API void shmbus_channel_close(shmbus_channel* channel);
SHMBUS_API size_t shmbus_channel_max_message_bytes(const shmbus_channel* channel);
/* Publishes a copy; waits up to wait_ns only on a full back-pressure channel. */
SHMBUS_API int shmbus_channel_publish(shmbus_channel* channel, const void* data, size_t len,
                                      int64_t wait_ns, uint32_t* receivers);
/* Zero-copy publishing: reserves `bytes` in the ring; fill shmbus_loan_data(), then commit
 * (publishes, frees the loan) or abandon (subscribers count it lost, frees the loan). A
 * loan must not outlive its channel. */
SHMBUS_API int shmbus_channel_loan(shmbus_channel* channel, size_t bytes, shmbus_loan** out);
SHMBUS_API void* shmbus_loan_data(shmbus_loan* loan, size_t* capacity);
SHMBUS_API int shmbus_loan_commit(shmbus_loan* loan, size_t bytes, uint32_t* receivers);
SHMBUS_API void shmbus_loan_abandon(shmbus_loan* loan);

/* ---- PUBSUB introspection --------------------------------------------------------- */

typedef struct shmbus_names shmbus_names; /* a list of names, freed by shmbus_names_free */
SHMBUS_API size_t shmbus_names_count(const shmbus_names* names);
SHMBUS_API const char* shmbus_names_at(const shmbus_names* names, size_t index, size_t* len);
SHMBUS_API void shmbus_names_free(shmbus_names* names);

/* PUBSUB CHANNELS [pattern]: pattern NULL (or pattern_len 0) lists every channel. */
SHMBUS_API int shmbus_pubsub_channels(shmbus_bus* bus, const char* pattern, size_t pattern_len,
                                      shmbus_names** out);
/* PUBSUB NUMSUB: counts[i] for channels[i] (lengths[i] bytes), i < n. */
SHMBUS_API int shmbus_pubsub_numsub(shmbus_bus* bus, const char* const* channels,
                                    const size_t* lengths, size_t n, uint64_t* counts);
/* PUBSUB NUMPAT */
SHMBUS_API int shmbus_pubsub_numpat(shmbus_bus* bus, uint64_t* count);

/* ---- Subscribing ------------------------------------------------------------------ */

typedef struct shmbus_sub shmbus_sub;

/* Where channels added by shmbus_subscribe start reading. */
enum {
  SHMBUS_START_LATEST = 0,   /* what is published from now on (Redis) */
  SHMBUS_START_EARLIEST = 1, /* the oldest message the ring still holds */
  SHMBUS_START_AFTER = 2     /* the message after `after_sequence` */
};

/* One delivery. pattern_len 0: a "message" (by channel name); else a "pmessage". */
typedef struct shmbus_message {
  const char* channel;
  size_t channel_len;
  const char* pattern;
  size_t pattern_len;
  const void* data;
  size_t len;
  uint64_t sequence;        /* per channel, from 0 */
  uint64_t publish_unix_ns; /* the publisher's CLOCK_REALTIME stamp */
  uint64_t lost_before;     /* messages of this channel missed just before this one */
  uint16_t origin;          /* 0: published on this host; else a bridge's host id */
  int gap;                  /* first of its channel after a reconnect */
} shmbus_message;

SHMBUS_API int shmbus_sub_open(const shmbus_options* options, shmbus_sub** sub);
SHMBUS_API void shmbus_sub_close(shmbus_sub* sub);
/* SUBSCRIBE / PSUBSCRIBE (at least one name) and UNSUBSCRIBE / PUNSUBSCRIBE (n == 0: all).
 * names[i] is lengths[i] bytes long. */
SHMBUS_API int shmbus_subscribe(shmbus_sub* sub, const char* const* channels, const size_t* lengths,
                                size_t n, int start, uint64_t after_sequence);
SHMBUS_API int shmbus_psubscribe(shmbus_sub* sub, const char* const* patterns,
                                 const size_t* lengths, size_t n);
SHMBUS_API int shmbus_unsubscribe(shmbus_sub* sub, const char* const* channels,
                                  const size_t* lengths, size_t n);
SHMBUS_API int shmbus_punsubscribe(shmbus_sub* sub, const char* const* patterns,
                                   const size_t* lengths, size_t n);
/* Channels plus patterns held (Redis's subscription count). */
SHMBUS_API size_t shmbus_sub_count(const shmbus_sub* sub);

/* The next message, as a private copy: SHMBUS_OK, SHMBUS_NO_MESSAGE on timeout, or an
 * error. */
SHMBUS_API int shmbus_next(shmbus_sub* sub, int64_t timeout_ns, shmbus_message* message);
/* The same without the copy: data points into the ring. On a lossy channel a publisher may
 * overwrite it while you read: what you computed from it counts only if shmbus_sub_intact()
 * says 1 afterwards. */
SHMBUS_API int shmbus_next_view(shmbus_sub* sub, int64_t timeout_ns, shmbus_message* message);
SHMBUS_API int shmbus_sub_intact(shmbus_sub* sub);
/* A descriptor that polls readable (level-triggered) while shmbus_next may have something
 * to return; for poll/epoll/event loops. Owned by the subscription: never read or close it. */
SHMBUS_API int shmbus_sub_fd(shmbus_sub* sub, int* fd);

/* ---- Counters ------------------------------------------------------------------------ */

typedef struct shmbus_channel_stats {
  const char* channel;
  size_t channel_len;
  uint64_t published;     /* messages published */
  uint64_t payload_bytes; /* payload bytes published */
  uint32_t subscribers;   /* subscriptions reading the ring now */
  uint32_t receivers;     /* what a publish returns now */
  uint64_t lost;          /* messages current subscribers were lapped over */
  uint64_t delivered;     /* messages current subscribers consumed */
  uint64_t last_publish_unix_ns;
  uint64_t ring_bytes;
  uint32_t max_message_bytes;
  int back_pressure;
} shmbus_channel_stats;
typedef struct shmbus_stats shmbus_stats;

/* A snapshot of every channel's counters (pattern NULL: all), read from shared memory. */
SHMBUS_API int shmbus_stats_read(const shmbus_options* options, const char* pattern,
                                 size_t pattern_len, shmbus_stats** out);
SHMBUS_API size_t shmbus_stats_count(const shmbus_stats* stats);
SHMBUS_API const shmbus_channel_stats* shmbus_stats_at(const shmbus_stats* stats, size_t index);
SHMBUS_API void shmbus_stats_free(shmbus_stats* stats);

#ifdef __cplusplus
}
#endif

#endif /* SHMBUS_SHMBUS_H */
