/* The C API, built as C11 against the installed surface only (include/shmbus/shmbus.h and
 * libshmbus.so): publish and subscribe, patterns, names with any bytes, zero-copy loans and
 * views, the pollable fd, PUBSUB introspection, counters and the error paths - against the
 * real shmbusd binary ($SHMBUSD) on a private bus. */
#define _POSIX_C_SOURCE 200809L

#include <poll.h>
#include <shmbus/shmbus.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond)                                                                           \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, \
              shmbus_last_error());                                                           \
      ++failures;                                                                             \
    }                                                                                         \
  } while (0)

#define SECOND 1000000000LL

static int same(const void* a, size_t a_len, const char* b) {
  return a_len == strlen(b) && memcmp(a, b, a_len) == 0;
}

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

int main(void) {
  const char* daemon = getenv("SHMBUSD");
  if (daemon == NULL) {
    fprintf(stderr, "SKIPPED: set SHMBUSD to the shmbusd binary\n");
    return 77;
  }
  char bus_name[64], dir[] = "/tmp/shmbus-capi-XXXXXX", socket_path[128];
  snprintf(bus_name, sizeof bus_name, "capi%d", (int)getpid());
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(socket_path, sizeof socket_path, "%s/bus.sock", dir);

  shmbus_options options;
  shmbus_options_init(&options);
  options.bus = bus_name;
  options.socket_path = socket_path;
  options.client_name = "c-api-test";

  /* No daemon yet: a clear error naming the socket, and no handle. */
  shmbus_bus* bus = (shmbus_bus*)1;
  CHECK(shmbus_connect(&options, &bus) == SHMBUS_ENODAEMON);
  CHECK(bus == NULL);
  CHECK(strstr(shmbus_last_error(), socket_path) != NULL);
  CHECK(strcmp(shmbus_strerror(SHMBUS_ENODAEMON), "no daemon answers on the control socket") == 0);

  pid_t pid = fork();
  if (pid == 0) {
    execl(daemon, daemon, "--bus", bus_name, "--socket", socket_path, "--log-level", "warn",
          (char*)NULL);
    _exit(127);
  }
  for (int i = 0; i < 500 && shmbus_connect(&options, &bus) != SHMBUS_OK; ++i) sleep_ms(10);
  CHECK(bus != NULL);
  if (bus == NULL) return 1;

  /* SUBSCRIBE + PSUBSCRIBE: a message and a pmessage, in that order. */
  shmbus_sub* sub = NULL;
  CHECK(shmbus_sub_open(&options, &sub) == SHMBUS_OK);
  const char* channels[] = {"c:1", "a\0b"}; /* the second holds a NUL byte */
  const size_t channel_lengths[] = {3, 3};
  CHECK(shmbus_subscribe(sub, channels, channel_lengths, 2, SHMBUS_START_LATEST, 0) == SHMBUS_OK);
  const char* patterns[] = {"c:*"};
  const size_t pattern_lengths[] = {3};
  CHECK(shmbus_psubscribe(sub, patterns, pattern_lengths, 1) == SHMBUS_OK);
  CHECK(shmbus_sub_count(sub) == 3);

  uint32_t receivers = 99;
  CHECK(shmbus_publish(bus, "c:1", 3, "hello", 5, &receivers) == SHMBUS_OK);
  CHECK(receivers == 2);
  shmbus_message m;
  CHECK(shmbus_next(sub, SECOND, &m) == SHMBUS_OK);
  CHECK(same(m.channel, m.channel_len, "c:1") && m.pattern_len == 0);
  CHECK(same(m.data, m.len, "hello") && m.sequence == 0 && m.lost_before == 0);
  CHECK(m.publish_unix_ns > 0 && m.origin == 0 && m.gap == 0);
  CHECK(shmbus_next(sub, SECOND, &m) == SHMBUS_OK);
  CHECK(same(m.pattern, m.pattern_len, "c:*") && same(m.channel, m.channel_len, "c:1"));
  CHECK(shmbus_next(sub, 0, &m) == SHMBUS_NO_MESSAGE);

  /* Names are bytes: "a\0b" is not "a". */
  CHECK(shmbus_publish(bus, "a\0b", 3, "\0\1\2", 3, &receivers) == SHMBUS_OK);
  CHECK(receivers == 1);
  CHECK(shmbus_next(sub, SECOND, &m) == SHMBUS_OK);
  CHECK(m.channel_len == 3 && memcmp(m.channel, "a\0b", 3) == 0);
  CHECK(m.len == 3 && memcmp(m.data, "\0\1\2", 3) == 0);

  /* The fd turns readable when a message waits. */
  int fd = -1;
  CHECK(shmbus_sub_fd(sub, &fd) == SHMBUS_OK && fd >= 0);
  CHECK(shmbus_publish(bus, "c:1", 3, "polled", 6, NULL) == SHMBUS_OK);
  struct pollfd p = {fd, POLLIN, 0};
  CHECK(poll(&p, 1, 1000) == 1 && (p.revents & POLLIN));
  CHECK(shmbus_next(sub, 0, &m) == SHMBUS_OK && same(m.data, m.len, "polled"));
  CHECK(shmbus_next(sub, 0, &m) == SHMBUS_OK && m.pattern_len == 3);

  /* A channel handle: a loan written in place, then a view of it in the ring. */
  shmbus_channel* channel = NULL;
  CHECK(shmbus_channel_open(bus, "c:1", 3, &channel) == SHMBUS_OK);
  CHECK(shmbus_channel_max_message_bytes(channel) > 0);
  shmbus_loan* loan = NULL;
  CHECK(shmbus_channel_loan(channel, 16, &loan) == SHMBUS_OK);
  size_t capacity = 0;
  char* place = (char*)shmbus_loan_data(loan, &capacity);
  CHECK(place != NULL && capacity == 16);
  memcpy(place, "in place", 8);
  CHECK(shmbus_loan_commit(loan, 8, &receivers) == SHMBUS_OK && receivers == 2);
  CHECK(shmbus_next_view(sub, SECOND, &m) == SHMBUS_OK && same(m.data, m.len, "in place"));
  CHECK(shmbus_sub_intact(sub) == 1);
  CHECK(shmbus_next(sub, SECOND, &m) == SHMBUS_OK && same(m.data, m.len, "in place"));
  CHECK(shmbus_channel_publish(channel, "fast", 4, 0, &receivers) == SHMBUS_OK && receivers == 2);
  CHECK(shmbus_next(sub, SECOND, &m) == SHMBUS_OK && same(m.data, m.len, "fast"));
  CHECK(shmbus_next(sub, SECOND, &m) == SHMBUS_OK && same(m.data, m.len, "fast"));
  /* An abandoned loan publishes nothing. */
  CHECK(shmbus_channel_loan(channel, 4, &loan) == SHMBUS_OK);
  shmbus_loan_abandon(loan);
  CHECK(shmbus_next(sub, 50000000, &m) == SHMBUS_NO_MESSAGE);

  /* Errors name the limit and the way out; nothing is published. */
  size_t too_large = shmbus_channel_max_message_bytes(channel) + 1;
  char* big = (char*)calloc(too_large, 1);
  CHECK(shmbus_channel_publish(channel, big, too_large, 0, NULL) == SHMBUS_ETOOLARGE);
  CHECK(strstr(shmbus_last_error(), "max_message_bytes") != NULL);
  CHECK(shmbus_publish(bus, "c:1", 3, big, too_large, NULL) == SHMBUS_ETOOLARGE);
  free(big);
  CHECK(shmbus_publish(bus, "", 0, "x", 1, NULL) == SHMBUS_EINVAL);
  CHECK(shmbus_subscribe(sub, NULL, NULL, 0, SHMBUS_START_LATEST, 0) == SHMBUS_EINVAL);
  CHECK(shmbus_subscribe(sub, channels, channel_lengths, 1, 42, 0) == SHMBUS_EINVAL);
  CHECK(shmbus_publish(NULL, "c:1", 3, "x", 1, NULL) == SHMBUS_EINVAL);
  CHECK(shmbus_next(sub, 0, &m) == SHMBUS_NO_MESSAGE);

  /* PUBSUB CHANNELS / NUMSUB / NUMPAT. */
  shmbus_names* names = NULL;
  CHECK(shmbus_pubsub_channels(bus, "c:*", 3, &names) == SHMBUS_OK);
  CHECK(shmbus_names_count(names) == 1);
  size_t name_len = 0;
  const char* name = shmbus_names_at(names, 0, &name_len);
  CHECK(name != NULL && same(name, name_len, "c:1"));
  CHECK(shmbus_names_at(names, 1, &name_len) == NULL);
  shmbus_names_free(names);
  const char* asked[] = {"c:1", "nobody"};
  const size_t asked_lengths[] = {3, 6};
  uint64_t counts[2] = {9, 9};
  CHECK(shmbus_pubsub_numsub(bus, asked, asked_lengths, 2, counts) == SHMBUS_OK);
  CHECK(counts[0] == 1 && counts[1] == 0);
  uint64_t numpat = 0;
  CHECK(shmbus_pubsub_numpat(bus, &numpat) == SHMBUS_OK && numpat == 1);

  /* Counters from shared memory. */
  shmbus_stats* stats = NULL;
  CHECK(shmbus_stats_read(&options, "c:1", 3, &stats) == SHMBUS_OK);
  CHECK(shmbus_stats_count(stats) == 1);
  const shmbus_channel_stats* row = shmbus_stats_at(stats, 0);
  CHECK(row != NULL && same(row->channel, row->channel_len, "c:1") && row->published == 5);
  shmbus_stats_free(stats);

  /* UNSUBSCRIBE / PUNSUBSCRIBE with no names drop everything. */
  CHECK(shmbus_unsubscribe(sub, NULL, NULL, 0) == SHMBUS_OK);
  CHECK(shmbus_punsubscribe(sub, NULL, NULL, 0) == SHMBUS_OK);
  CHECK(shmbus_sub_count(sub) == 0);
  CHECK(shmbus_publish(bus, "c:1", 3, "late", 4, &receivers) == SHMBUS_OK && receivers == 0);

  int major = -1, minor = -1, patch = -1;
  shmbus_version(&major, &minor, &patch);
  CHECK(major == SHMBUS_VERSION_MAJOR && minor == SHMBUS_VERSION_MINOR);

  shmbus_channel_close(channel);
  shmbus_sub_close(sub);
  shmbus_bus_close(bus);
  shmbus_bus_close(NULL); /* NULL is fine */
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  rmdir(dir);
  if (failures == 0) printf("c api: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
