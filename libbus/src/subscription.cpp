// Subscription: many rings read through one doorbell, with Redis's delivery rules.
//
// How a message reaches next(): the daemon registered a reader slot in the channel's ring
// linked to bit B of this subscription's doorbell (before replying to subscribe, or before
// any publisher learned of a new channel matching a pattern). A publisher's commit sets B;
// next() takes the set bits and reads those rings. Bit 0 says that control events (a new
// channel matches a pattern, a channel is reclaimed) wait on the socket.
//
// Which ring goes next: over several rings (or patterns, which may bring more), the
// message published first - each ring's next message is read ahead and they are merged by
// publish stamp, in delivery_order.hpp, as Redis delivers each publisher's messages in
// publish order across channels. A subscription of one channel by name reads its ring as
// it comes.
//
// A subscription over a few rings (kDirectPollRings) also looks at the rings themselves
// before the doorbell, while busy and while spinning: a message is then seen through the one
// cache line the publisher wrote (the frame's state), not through the doorbell's leaf and
// summary words first; and while the subscriber keeps up, the bits it does not take stay
// set, so publishers find them set and write nothing to the doorbell. Bits are hints, never
// the only way to a message, so reading a ring without taking its bit loses nothing: the
// bit is taken (and the ring found empty, or drained) before the subscriber parks.
//
// Invariants
//   I1 RingReaders' three indexes describe the same readers; each reader holds the slot the
//      daemon gave it until it is dropped (Reader's destructor frees it). ring_readers.hpp
//   I2 Events and replies are applied in the order the daemon sent them (request() stops
//      reading at the reply), so a bit the daemon reuses is never held by two readers.
//   I3 A ring is in the ready queue at most once (RingReader::queued).
//   I4 A staged ring's head is its reader's next message, unconsumed; staged_count counts
//      the staged rings, and DeliveryOrder holds one current entry for each (is_staged).
#include "shmbus/subscription.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <thread>
#include <unordered_set>
#include <utility>

#include "client.hpp"
#include "delivery_order.hpp"
#include "doorbell.hpp"
#include "fences.hpp"
#include "glob.hpp"
#include "naming.hpp"
#include "notifier.hpp"
#include "reconnect.hpp"
#include "ring_readers.hpp"
#include "settled_queue.hpp"

namespace shmbus {

using namespace protocol;

namespace {

constexpr uint32_t kControlBit = 0;
// Up to this many rings, next() polls the rings directly (see the header comment); beyond
// it, a poll of every ring would cost more than the doorbell saves.
constexpr size_t kDirectPollRings = 8;
// How often, and over how many rings at most, a subscription looks at rings whose doorbell
// bits it did not get (State::sweep). 4,096 rings a second costs a parked subscriber over
// 100,000 channels about half a millisecond of CPU per second.
constexpr auto kSweepPeriod = std::chrono::seconds(1);
constexpr size_t kSweepRings = 4096;
// Discovery rounds (delivery_order.hpp) one message may wait for. Each round can stage
// heads that need a round of their own; past this many, a stream of new arrivals has kept
// the earliest head waiting long enough and it goes out (so a publisher racing with us
// cannot keep us looking instead of delivering).
constexpr uint32_t kMaxRoundsPerMessage = 4;
// The least patience DeliveryOrder::starving() gets, however small the rings.
constexpr uint64_t kMinPatience = 65536;

// Splits a long list of names into runs that fit in one control message each.
std::vector<std::span<const std::string>> batches(std::span<const std::string> names) {
  std::vector<std::span<const std::string>> runs;
  size_t start = 0, bytes = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > start && bytes + names[i].size() + 8 > kMaxFrameBytes / 2) {
      runs.push_back(names.subspan(start, i - start));
      start = i;
      bytes = 0;
    }
    bytes += names[i].size() + 8;
  }
  runs.push_back(names.subspan(start));
  return runs;
}

Message make_message(std::string_view channel, std::string_view pattern,
                     std::span<const std::byte> payload, const MessageInfo& info,
                     bool gap = false) {
  Message m;
  m.gap = gap;
  m.channel = channel;
  m.pattern = pattern;
  m.payload = payload;
  m.sequence = info.sequence;
  m.publish_unix_ns = info.publish_unix_ns;
  m.lost_before = info.lost_before;
  m.origin = info.origin;
  return m;
}

Writer& write_names(Writer& w, std::span<const std::string> names) {
  w.u32(static_cast<uint32_t>(names.size()));
  for (const auto& name : names) w.str(name);
  return w;
}

// UNSUBSCRIBE / PUNSUBSCRIBE on the names held: those given, or all of them if none is.
void forget(std::vector<std::string>& held, std::span<const std::string> names) {
  if (names.empty())
    held.clear();
  else
    for (const auto& name : names) std::erase(held, name);
}

std::vector<std::string> to_strings(std::initializer_list<std::string_view> names) {
  return std::vector<std::string>(names.begin(), names.end());
}

}  // namespace

// Hidden: a nested class takes its enclosing class's visibility, and Subscription is exported.
struct __attribute__((visibility("hidden"))) Subscription::State {
  explicit State(Endpoint endpoint_in, ReconnectOptions reconnect_options)
      : endpoint(std::move(endpoint_in)), reconnect(std::move(reconnect_options)) {}

  const Endpoint endpoint;
  Reconnect reconnect;
  // The link: null from a loss of the daemon (lose_link) until a reconnect makes it anew.
  std::unique_ptr<BusMemory> memory;  // before `connection`, which hands it grants
  std::unique_ptr<ControlConnection> connection;
  layout::DoorbellHeader* doorbell = nullptr;
  std::unique_ptr<Waiter> waiter;
  std::pair<int32_t, uint64_t> lost_daemon;  // the daemon of the last link lost
  // While subscribing again after a reconnect: where the rings start. Readers added then
  // get RingReader::gap.
  std::optional<StartAt> resubscribing;
  // Channels read on the link lost last and not read since: the first reader of one on a
  // later link gets RingReader::gap too (a pattern's channel may come back by an attach).
  std::unordered_set<std::string> gap_channels;

  RingReaders rings;                  // the rings read, and those with news (I1, I3)
  std::vector<std::string> channels;  // subscribe order
  std::vector<std::string> patterns;  // psubscribe order (pmessage order)
  size_t direct_cursor = 0;           // read_rings_directly(): where the round robin stands
  uint64_t direct_reads = 0;          // read_rings_directly() calls (control bit: every 64th)
  uint32_t polls_since_take = 0;
  std::chrono::nanoseconds spin = kSpinBeforePark;  // set_spin()
  bool local_only = false;                          // set_local_only()
  bool doorbell_rang = false;  // something saw a bit set that take_bits() has not taken
  // sweep(): when the next one is due, where it stands in `readers`, and how often
  // take_bits() ran since it last read the clock.
  std::chrono::steady_clock::time_point next_sweep =
      std::chrono::steady_clock::now() + kSweepPeriod;
  size_t sweep_cursor = 0;
  uint32_t calls_since_sweep_check = 0;
  bool control_pending = false;
  std::vector<uint32_t> corrupt_rings;  // channel ids to report (report_corrupt_rings)

  SettledQueue settled;  // deliveries a subscription change fixed (settled_queue.hpp)

  // The message being delivered, once per reason: channel, then each matching pattern.
  struct Delivery {
    std::vector<std::byte> payload;    // next()'s private copy
    std::span<const std::byte> bytes;  // what is delivered: `payload`, or in the ring (held)
    MessageInfo info;
    uint32_t bit = 0;  // its ring's doorbell bit
    size_t next = 0;   // deliveries made
    size_t count = 0;  // deliveries it has
    bool gap = false;  // its channel's first since a reconnect (Message::gap)
    // next_view(): the frame behind the message stays unconsumed (its reader's slot does
    // not move past it, so a back-pressure ring cannot overwrite it) until the next call of
    // next()/next_view() or a subscription change releases it.
    bool held = false;
    MessageView view;
    bool found_intact = false;  // what the caller's latest intact() said
  };
  Delivery current;

  // Reading several rings (or settled messages beside a ring) in publish order: the heads
  // staged, by key (delivery_order.hpp), and how many rings hold one.
  DeliveryOrder order;
  size_t staged_count = 0;

  // fd(): made on first call; from then on it watches the doorbell.
  std::unique_ptr<Notifier> notifier;

  ~State() {
    notifier.reset();
    rings.clear();  // readers free their slots before the connection closes
    if (connection && memory->daemon_alive()) {
      try {
        connection->goodbye();
      } catch (const std::exception&) {
        // Gone meanwhile: nobody to tell.
      }
    }
  }

  bool holds_channel(std::string_view name) const {
    return std::find(channels.begin(), channels.end(), name) != channels.end();
  }

  void refresh_reasons(RingReader& rr) const {
    rr.by_name = holds_channel(rr.channel);
    rr.patterns.clear();
    for (const auto& p : patterns)
      if (glob_match(p, rr.channel)) rr.patterns.push_back(p);
  }

  RingReader* reader_at(uint32_t bit) const { return rings.at(bit); }
  void enqueue(uint32_t bit) { rings.enqueue(bit); }

  // Makes the message just read from `rr` the current one; false if the ring is read for
  // no reason any more (being dropped) or the message is imported and we are local only:
  // the message is then let go.
  bool begin_delivery(RingReader& rr) {
    current.bit = rr.bit;
    if (rr.deliveries() == 0) {  // being dropped: read for no reason any more
      rr.pending_lost += current.info.lost_before;
      release_view(false);
      return false;
    }
    if (!admit(rr, current.info)) {
      release_view(false);
      return false;
    }
    current.next = 0;
    current.count = rr.deliveries();
    current.gap = std::exchange(rr.gap, false);
    return true;
  }

  // Whether a message read from `rr` goes out: not an imported one while we are local
  // only. The losses reported with a message let go are carried to the next one that goes.
  bool admit(RingReader& rr, MessageInfo& message) {
    if (local_only && message.origin != 0) {
      rr.pending_lost += message.lost_before;
      return false;
    }
    message.lost_before += std::exchange(rr.pending_lost, 0);
    return true;
  }

  // Small subscriptions: reads the next message straight from the rings (round robin),
  // without the doorbell. Returns true if one became the current message.
  bool read_rings_directly(bool zero_copy) {
    if (!reads_rings_directly()) return false;
    const std::vector<RingReader*>& readers = rings.all();
    const size_t n = readers.size();
    // A pending control event (a new channel for a pattern, a channel reclaimed) goes
    // through take_bits(): busy rings must not keep it waiting. Looked at every 64th read
    // only: the control bit shares its word with ring bits publishers set.
    if (++direct_reads % 64 == 0 && waiter->is_set(kControlBit)) {
      doorbell_rang = true;
      return false;
    }
    for (size_t k = 0; k < n; ++k) {
      if (++direct_cursor >= n) direct_cursor = 0;
      RingReader& rr = *readers[direct_cursor];
      if (rr.queued) continue;  // its bit was taken: step 3 reads it, in its turn
      if (read_ring(rr, zero_copy) && begin_delivery(rr)) return true;
    }
    return false;
  }

  bool reads_rings_directly() const { return !rings.empty() && rings.size() <= kDirectPollRings; }

  // Whether it is time to look at rings whose bits never came (sweep()). The clock is read
  // only every 1024th call on a busy path.
  bool sweep_due(bool busy) {
    if (busy && ++calls_since_sweep_check % 1024 != 0) return false;
    return std::chrono::steady_clock::now() >= next_sweep;
  }

  // The doorbell is written by every process that publishes to any ring we read, so a bit
  // may be cleared (or never set) by a buggy or hostile one. Now and then, queue rings
  // without their bits - up to kSweepRings of them, round robin - so a withheld bit delays
  // a message by at most a few sweeps instead of forever.
  void sweep() {
    next_sweep = std::chrono::steady_clock::now() + kSweepPeriod;
    const std::vector<RingReader*>& readers = rings.all();
    const size_t n = std::min(readers.size(), kSweepRings);
    for (size_t k = 0; k < n; ++k) {
      if (++sweep_cursor >= readers.size()) sweep_cursor = 0;
      enqueue(readers[sweep_cursor]->bit);
    }
  }

  // Takes every pending doorbell bit: rings to read, and control events.
  uint32_t take_bits() {
    polls_since_take = 0;
    doorbell_rang = false;
    if (sweep_due(true)) sweep();
    return waiter->take_ready([this](uint32_t bit) {
      if (bit == kControlBit)
        control_pending = true;
      else
        enqueue(bit);
    });
  }

  // Step 5 of next(): whether to look at the doorbell now. A subscription that reads its
  // rings directly does so only now and then while polling: the summary and leaf words are
  // lines publishers write on every message the subscriber took the bit of, and reading
  // them on every poll puts a second cache miss in front of the message. Always when the
  // doorbell rang, when an fd() notifier waits on it (it must see the bits taken), when the
  // control bit is set (a look at one word, which publishers leave alone while the ring
  // bits sharing it stay set), and before any wait (wait_for_news takes them before it
  // parks).
  bool must_take_bits() {
    return !reads_rings_directly() || doorbell_rang || notifier != nullptr ||
           ++polls_since_take >= 64 || waiter->is_set(kControlBit);
  }

  // Spins on the rings (small subscriptions) and on the doorbell, then takes every bit and
  // parks on the doorbell alone: from then on any publish sets a bit and sees us asleep.
  Status wait_for_news(std::chrono::nanoseconds timeout) {
    const bool direct = reads_rings_directly();
    uint32_t spins = 0;
    auto news = [&] {
      if (direct) {
        for (const RingReader* rr : rings.all())
          if (rr->reader->has_data()) return true;
        // The doorbell only for control events (and rings it may know of first): rarely.
        if (++spins % 16 != 0) return false;
      }
      if (!waiter->any_ready()) return false;
      doorbell_rang = true;
      return true;
    };
    WaitPlan plan;
    if (spin_until_ready(news, timeout, spin, plan)) return Status::kOk;
    if (take_bits() > 0 || control_pending) return Status::kOk;
    // Parked, the bell is the only way in - except that each capped sleep (Waiter's
    // kMaxPark) ends with a look at the sweep clock, so a withheld bit cannot keep us here.
    bool sweeping = false;
    const Status parked = waiter->park_until(
        [&] {
          return waiter->any_ready() || (sweeping = sweep_due(false)) || !memory->daemon_alive();
        },
        plan.deadline, plan.forever);
    if (sweeping) sweep();
    doorbell_rang = true;
    return parked;
  }

  void add_reader(const Attachment& a, StartAt start) {
    if (RingReader* known = rings.find(a.ring.channel_id)) {
      refresh_reasons(*known);
      return;
    }
    if (a.bit == kControlBit || a.bit >= waiter->geometry().bits || reader_at(a.bit) != nullptr)
      throw Error(Errc::kProtocol, "shmbusd assigned doorbell bit " + std::to_string(a.bit) +
                                       " that is invalid or taken");
    auto owned = std::make_unique<RingReader>();
    RingReader& rr = *owned;
    rr.channel_id = a.ring.channel_id;
    rr.bit = a.bit;
    rr.channel = a.channel;
    try {
      rr.ring = memory->ring(a.ring);
    } catch (const Error& e) {
      if (e.code() != Errc::kCorrupt) throw;
      // Some process wrote over the ring before we opened it. Not ours to fail over: the
      // daemon is told, replaces the ring and attaches us to the new one (a detach, then an
      // attach), and meanwhile this channel reads nothing.
      corrupt_rings.push_back(a.ring.channel_id);
      return;
    }
    if (a.slot >= rr.ring.reader_capacity())
      throw Error(Errc::kProtocol, "shmbusd assigned a reader slot out of range");
    const bool from_slot = start.kind == StartAt::Kind::kLatest || a.start_position == kKeepReading;
    if (from_slot) {
      rr.reader = std::make_unique<Reader>(rr.ring, Reader::Start::kLatest);
      rr.reader->adopt_slot(a.slot, doorbell, waiter->geometry(), a.bit, true, a.start_sequence);
    } else {
      rr.reader = std::make_unique<Reader>(rr.ring,
                                           start.kind == StartAt::Kind::kEarliest
                                               ? Reader::Start::kEarliest
                                               : Reader::Start::kAfterSequence,
                                           start.sequence);
      rr.reader->adopt_slot(a.slot, doorbell, waiter->geometry(), a.bit, false, 0);
    }
    refresh_reasons(rr);
    rr.gap = resubscribing.has_value() || gap_channels.erase(rr.channel) > 0;
    const uint32_t bit = rr.bit;
    rings.add(std::move(owned));
    // Past kDirectPollRings nobody reads rings directly any more: a ring with messages left
    // and its bit already taken would wait for its next publish. Queue them all once.
    if (rings.size() == kDirectPollRings + 1)
      for (RingReader* other : rings.all()) enqueue(other->bit);
    enqueue(bit);  // messages may already wait (published between registration and now)
  }

  void drop_reader(uint32_t channel_id) {
    // No view is held here: every caller settled (which releases it) or released it first.
    if (const RingReader* rr = rings.find(channel_id); rr != nullptr && rr->staged)
      --staged_count;  // its heap entry goes stale with it
    const std::optional<uint32_t> bit = rings.remove(channel_id);  // the Reader frees its slot
    if (bit && current.bit == *bit) current.next = current.count;  // drop its other deliveries
  }

  // Applies queued control events (in the order they arrived).
  void apply_events() {
    auto& events = connection->events();
    while (!events.empty()) {
      OwnedFrame event = std::move(events.front());
      events.pop_front();
      Parser p = event.parser();
      if (event.type == Type::kAttach) {
        const Attachment a = Attachment::read(p);
        p.end();
        add_reader(a, StartAt::latest());
      } else if (event.type == Type::kDetach) {
        const uint32_t channel_id = p.u32();
        p.end();
        // The daemon frees the ring only after we let go: read what is left first, so
        // every message is still delivered or reported lost.
        settle([&](const RingReader& rr) { return rr.channel_id == channel_id; });
        drop_reader(channel_id);
      } else {
        throw Error(Errc::kProtocol, std::string("unexpected event ") + type_name(event.type));
      }
    }
  }

  void poll_control() {
    control_pending = false;
    try {
      connection->poll_events();
      apply_events();
      report_corrupt_rings();
    } catch (const Error& e) {
      if (e.code() != Errc::kDaemonGone) throw;
      // The connection is closed (the daemon stopped, or closed it): what the rings hold is
      // settled for next(), then the link goes and next() connects again.
      apply_events();
      lose_link(e.what());
    }
  }

  // Applies the control events already in the socket, before a subscription change settles
  // what was published before it. A channel created by a publish that happened before this
  // change reached us as an attach event before that publisher could publish (the daemon
  // attaches pattern subscribers first): without its reader, settle() would miss the
  // message, and the change would add a reason to it that Redis never gives.
  void apply_waiting_events() {
    connection->poll_events();
    apply_events();
  }

  // Tells the daemon about rings found corrupt when they were to be opened. Sent between
  // requests, never inside one (a reply may come in several frames).
  void report_corrupt_rings() {
    while (!corrupt_rings.empty()) {
      const uint32_t channel_id = corrupt_rings.back();
      corrupt_rings.pop_back();
      Writer w = connection->next_request(Type::kReportCorrupt);
      w.u32(channel_id);
      request(w);
    }
  }

  // Sends a (un)subscribe request, applies the events that preceded the reply, then
  // returns the reply (I2).
  OwnedFrame request(Writer& w) {
    OwnedFrame reply = connection->request(w);
    apply_events();
    return reply;
  }

  // Applies a kSubscribed reply, which may come in several frames (the last one final).
  void apply_subscribed(OwnedFrame reply, StartAt start) {
    for (;;) {
      Parser p = reply.parser();
      const bool final = p.u8() != 0;
      const uint32_t n = p.count(kMaxFrameBytes, 40, "attachments");
      std::vector<Attachment> attachments;
      for (uint32_t i = 0; i < n; ++i) attachments.push_back(Attachment::read(p));
      std::string error;
      auto code = Errc::kLimit;
      if (final) {
        p.u32();  // subscription count (we keep our own)
        code = static_cast<Errc>(p.u16());
        error = std::string(p.str(kMaxErrorBytes, "error"));
      }
      p.end();
      for (const auto& a : attachments) add_reader(a, start);
      if (!error.empty()) throw Error(code, error);
      if (final) return;
      reply = connection->next_reply(reply.request, Type::kSubscribed);
    }
  }

  void apply_unsubscribed(const OwnedFrame& reply) {
    Parser p = reply.parser();
    const uint32_t n = p.count(kMaxNamesPerRequest * 4u, 4, "detached channels");
    for (uint32_t i = 0; i < n; ++i) drop_reader(p.u32());
    p.u32();
    p.end();
  }

  // Moves everything already published on rings that `affected` selects (and the rest of
  // the message being delivered) into `settled`, with today's reasons. Called just before a
  // change adds reasons and just after the daemon confirmed one that removes them.
  template <typename Affected>
  void settle(Affected&& affected) {
    release_view(true);
    const RingReader* delivering = reader_at(current.bit);
    if (current.next < current.count && delivering != nullptr) {
      // Its first delivery went out: the rest go before anything else (key 0, round 0), so
      // nothing settled here can come between a message and its pmessages.
      for (size_t i = current.next; i < delivering->deliveries(); ++i)
        settled.push(delivery(*delivering, i, current.bytes, current.info, current.gap, 0, 0));
    }
    current.next = current.count = 0;
    std::vector<std::byte> bytes;
    MessageInfo message;
    for (RingReader* r : rings.all()) {
      RingReader& rr = *r;
      if (!affected(rr)) continue;
      unstage(rr);  // its staged head is read again below, as a copy
      // Only what was published before now: a fast publisher must not keep us here. At most
      // a lap of messages: a ring whose claim someone forged far ahead must not either.
      const uint64_t stop = rr.ring.claim_position_relaxed();
      for (uint64_t budget = rr.ring.capacity() / layout::kFrameAlignment;
           budget > 0 && rr.reader->position() < stop &&
           rr.reader->try_read_copy(bytes, message) == Status::kOk;
           --budget) {
        const uint64_t key = order.key_for(message.publish_unix_ns, rr.last_key);
        rr.last_key = key;  // consumed intact
        if (!admit(rr, message)) continue;
        const bool gap = std::exchange(rr.gap, false);  // it goes with the first one out
        for (size_t i = 0; i < rr.deliveries(); ++i)
          settled.push(delivery(rr, i, bytes, message, gap, key, order.round()));
      }
    }
    settled.sort();  // key order, for the merge in read_in_order()
  }

  static SettledDelivery delivery(const RingReader& rr, size_t index,
                                  std::span<const std::byte> bytes, const MessageInfo& message,
                                  bool gap, uint64_t key, uint64_t staged_round) {
    return SettledDelivery{
        rr.channel, rr.pattern_of(index), {bytes.begin(), bytes.end()}, message, gap,
        key,        staged_round};
  }

  // Ends the hold on the current message's frame (next_view), if any. With `keep_rest`, the
  // deliveries still to go (its pmessages) are copied out first, so they can go out later;
  // if the frame turns out overwritten, they are dropped instead and the message counts as
  // lost, like any torn read.
  void release_view(bool keep_rest) {
    if (!current.held) return;
    current.held = false;
    RingReader* rr = reader_at(current.bit);
    if (rr == nullptr) return;  // dropped: its Reader (and slot) are gone already
    const bool more = keep_rest && current.next < current.count;
    if (more) {
      rr->reader->copy_payload(current.view, current.payload);
      current.bytes = current.payload;
      // Overwritten before or while we copied: the deliveries still to go would be torn.
      // (One the caller already checked with intact() stays delivered, below.)
      if (!rr->reader->intact(current.view)) current.next = current.count = 0;
    }
    if (current.found_intact) {
      rr->reader->accept(current.view);
    } else if (!rr->reader->consume(current.view)) {
      current.next = current.count = 0;
    }
  }

  // Reads the next message of `rr`: a copy, or (zero_copy) a view held until released.
  bool read_ring(RingReader& rr, bool zero_copy) {
    if (!zero_copy) {
      if (rr.reader->try_read_copy(current.payload, current.info) != Status::kOk) return false;
      current.bytes = current.payload;
      return true;
    }
    if (rr.reader->try_read(current.view) != Status::kOk) return false;
    current.held = true;
    current.found_intact = false;
    current.info = current.view;
    current.bytes = {current.view.payload, current.view.length};
    return true;
  }

  // ---- Publish order across rings (delivery_order.hpp) ----

  // Whether next() merges by key: over several rings; or one ring beside settled messages,
  // or beside patterns (a control event may bring a new channel's ring, holding a message
  // published before the one read: discover() looks). With no ring, settled messages are
  // all there is, already in key order; one ring held by name is read as it comes.
  bool merges() const {
    return rings.size() >= 2 || (!rings.empty() && (!settled.empty() || !patterns.empty()));
  }

  // Reads `rr`'s next message without consuming it and files it by key; false if it has
  // none. A staged ring stays staged.
  bool stage(RingReader& rr) {
    if (rr.staged) return true;
    if (rr.reader->try_read(rr.head) != Status::kOk) return false;
    rr.staged = true;
    rr.head_key = order.key_for(rr.head.publish_unix_ns, rr.last_key);
    rr.staged_round = order.round();
    rr.stage_serial = order.push(rr.head_key, rr.bit);
    ++staged_count;
    order.compact(staged_count, [this](const DeliveryOrder::Entry& e) { return is_staged(e); });
    return true;
  }
  bool is_staged(const DeliveryOrder::Entry& e) const {
    const RingReader* rr = rings.at(e.bit);
    return rr != nullptr && rr->staged && rr->stage_serial == e.serial;
  }
  // Forgets `rr`'s staged head (it is still the ring's next message: reading it again finds
  // it) and queues the ring, which has it.
  void unstage(RingReader& rr) {
    if (!rr.staged) return;
    rr.staged = false;
    --staged_count;
    enqueue(rr.bit);
  }
  void unstage_all() {
    for (RingReader* rr : rings.all()) unstage(*rr);
    order.clear();
  }
  void stage_ready() {
    while (rings.has_ready())
      if (RingReader* rr = rings.pop_ready()) stage(*rr);
  }

  // A discovery round: stages the head of every ring that got news since the last one -
  // every ring looked at (few rings), or those whose doorbell bits are set. False if a
  // control event waits: it may bring a ring (a new channel for a pattern) holding a
  // message published before the heads staged, so next() applies it before it delivers.
  bool discover() {
    order.begin_round();
    if (reads_rings_directly()) {
      if (waiter->is_set(kControlBit)) {
        doorbell_rang = true;  // step 5 takes it
        return false;
      }
      for (RingReader* rr : rings.all()) stage(*rr);
    } else {
      take_bits();
    }
    stage_ready();
    close_round_if_quiet();
    return !control_pending;
  }

  // Doorbell bits: once every ring whose bit was taken is staged and no bit is set, each
  // ring holding a message published before a staged head is staged too (its publisher set
  // its bit before committing that head: the bit was taken, so the ring was staged after,
  // or it would still be set). The heads need no round of their own: one begins now.
  // (A look at the summary words, which take_bits() reads first anyway.)
  void close_round_if_quiet() {
    if (!reads_rings_directly() && !rings.has_ready() && !waiter->any_ready()) order.begin_round();
  }

  enum class Next { kNothing, kRing, kSettled };
  // Picks what goes out next, by key, among the staged heads and the settled messages:
  // kRing (it became the current message), kSettled (the front of `settled`) or kNothing.
  Next read_in_order(bool zero_copy) {
    const bool direct = reads_rings_directly();
    // As read_rings_directly(): a control event must not wait behind busy rings.
    if (direct && ++direct_reads % 64 == 0 && waiter->is_set(kControlBit)) {
      doorbell_rang = true;
      return Next::kNothing;
    }
    stage_ready();
    bool looked_everywhere = false;  // direct: a round has looked at every ring
    const auto staged = [this](const DeliveryOrder::Entry& e) { return is_staged(e); };
    for (uint32_t rounds = 0;;) {
      // A head passed over longer than any honest one can be goes first (delivery_order.hpp).
      if (const DeliveryOrder::Entry* late =
              order.starving(std::max<uint64_t>(rings.max_messages(), kMinPatience), staged)) {
        RingReader& rr = *reader_at(late->bit);
        if (deliver_staged(rr, zero_copy)) return Next::kRing;
        continue;
      }
      const DeliveryOrder::Entry* top = order.earliest(staged);
      const bool from_settled =
          !settled.empty() && (top == nullptr || settled.front().key <= top->key);
      if (!from_settled && top == nullptr) {
        if (!direct || looked_everywhere) return Next::kNothing;  // bits: next() takes them
        if (!discover()) return Next::kNothing;
        looked_everywhere = true;
        ++rounds;
        continue;
      }
      const uint64_t staged_round =
          from_settled ? settled.front().staged_round : reader_at(top->bit)->staged_round;
      if (!order.settled_before(staged_round) && rounds == 0) close_round_if_quiet();
      if (!order.settled_before(staged_round) && rounds < kMaxRoundsPerMessage) {
        // Something published before it may not have been seen yet: look once more.
        if (!discover()) return Next::kNothing;
        looked_everywhere = direct;
        ++rounds;
        continue;
      }
      if (from_settled) {
        order.delivered();
        return Next::kSettled;
      }
      RingReader& rr = *reader_at(top->bit);
      order.pop();
      if (deliver_staged(rr, zero_copy)) return Next::kRing;
    }
  }

  // Makes `rr`'s staged head the current message; false if it does not go out.
  bool deliver_staged(RingReader& rr, bool zero_copy) {
    rr.staged = false;  // its entries in `order` are stale from now on
    --staged_count;
    order.delivered();
    if (take_head(rr, zero_copy) && begin_delivery(rr)) {
      // Its next message is staged on the next call, once the view (if any) is let go.
      enqueue(rr.bit);
      return true;
    }
    // Torn (counted lost) or not delivered (no reason any more, or imported while local
    // only), and nothing held: its next message competes for this turn.
    stage(rr);
    return false;
  }

  // Makes `rr`'s staged head (no longer staged) the current message: a held view, or a copy
  // consumed at once. False if a publisher overwrote it first (it counts as lost).
  bool take_head(RingReader& rr, bool zero_copy) {
    if (zero_copy) {
      // A key raises its ring's floor only from a message read intact (item 5 of a review:
      // a lapped frame's stamp may be the next lap's).
      if (rr.reader->intact(rr.head)) rr.last_key = rr.head_key;
      current.view = rr.head;
      current.held = true;
      current.found_intact = false;
      current.info = current.view;
      current.bytes = {current.view.payload, current.view.length};
      return true;
    }
    rr.reader->copy_payload(rr.head, current.payload);
    if (!rr.reader->consume(rr.head)) return false;
    rr.last_key = rr.head_key;
    current.info = rr.head;
    current.bytes = current.payload;
    return true;
  }

  Message pop_settled() {
    const SettledDelivery& d = settled.take();
    return make_message(d.channel, d.pattern, d.payload, d.info, d.gap);
  }

  // The subscription changes, on a working link (callers see to it: with_link).
  void subscribe_now(std::span<const std::string> channels, StartAt start);
  void psubscribe_now(std::span<const std::string> patterns);
  void unsubscribe_now(std::span<const std::string> channels);
  void punsubscribe_now(std::span<const std::string> patterns);

  // Makes the link: connection (HELLO), memory, doorbell, waiter - all of it or, if any
  // step throws (as ControlConnection does, or kProtocol), none of it. REQUIRES: no link.
  void connect_link() {
    auto fresh_memory = std::make_unique<BusMemory>(endpoint.bus);
    auto fresh = std::make_unique<ControlConnection>(endpoint, Role::kSubscriber,
                                                     fresh_memory->grant_handler());
    const Welcome& welcome = fresh->welcome();
    const uint64_t doorbell_bytes = layout::doorbell_bytes(welcome.doorbell_bits);
    if (welcome.doorbell_bits < 2 || welcome.doorbell_offset < layout::kPageSize ||
        welcome.doorbell_offset > fresh_memory->size(layout::kDoorbellArena) ||
        fresh_memory->size(layout::kDoorbellArena) - welcome.doorbell_offset < doorbell_bytes)
      throw Error(Errc::kProtocol, "shmbusd gave a doorbell outside the doorbell arena");
    if (fresh_memory->life_word() == nullptr)
      throw Error(Errc::kProtocol, "shmbusd did not grant the bus's control memory");
    layout::DoorbellHeader* fresh_doorbell = nullptr;
    try {
      fresh_doorbell =
          doorbell::open(fresh_memory->base(layout::kDoorbellArena) + welcome.doorbell_offset);
    } catch (const std::exception& e) {
      throw Error(Errc::kProtocol, std::string("subscription doorbell is not usable: ") + e.what());
    }
    fresh_memory->set_doorbell_bits(welcome.doorbell_bits);
    fresh_doorbell->local_only.store(local_only ? 1 : 0, std::memory_order_seq_cst);
    waiter = std::make_unique<Waiter>(fresh_doorbell, DoorbellGeometry(welcome.doorbell_bits));
    doorbell = fresh_doorbell;
    memory = std::move(fresh_memory);
    connection = std::move(fresh);
    if (notifier) watch_doorbell();
  }

  void watch_doorbell() {
    // Readable once a sweep period passes without news too, so an event loop's next() gets
    // to sweep() for bits a hostile publisher withheld (see State::sweep); and at once when
    // the daemon is gone, so that next() notices.
    const BusMemory* watched = memory.get();  // outlives the watch: drop_link unwatches first
    notifier->watch(doorbell, waiter->geometry(), kControlBit, kSweepPeriod,
                    [watched] { return !watched->daemon_alive(); });
    notifier_wake_at.reset();
  }

  // While there is no link: the fd turns readable when the next reconnect try is due (and
  // not before: it is cleared here, so an event loop does not spin while the daemon is away).
  void notify_at_next_try() {
    if (!notifier) return;
    notifier->clear();
    if (notifier_wake_at == reconnect.next_try()) return;  // already set for it
    notifier_wake_at = reconnect.next_try();
    notifier->wake_at(*notifier_wake_at);
  }

  // Lets go of the link and of everything read through it: readers (their slots are in the
  // old reader tables, which nobody reads any more), the notifier's watch, the connection
  // and the memory. Messages already settled stay to be delivered.
  void drop_link() {
    if (notifier) notifier->unwatch();
    notifier_wake_at.reset();
    release_view(false);
    rings.clear();  // the readers' slots are in the old reader tables: nobody reads them
    order.clear();
    staged_count = 0;
    current.next = current.count = 0;
    control_pending = doorbell_rang = false;
    corrupt_rings.clear();
    direct_cursor = sweep_cursor = 0;
    waiter.reset();
    doorbell = nullptr;
    connection.reset();
    memory.reset();
    // An event loop waiting on fd() must hear of it now: settled messages may wait, and the
    // next call of next() is what reconnects (and sets the fd for the next try).
    if (notifier) notifier->wake_at(Reconnect::Clock::now());
  }

  // The daemon is gone, or closed this connection: keeps what its rings hold for next()
  // (settle: at most a lap of each, published before now), drops the link and reports the
  // loss. Publishers learn of the death from the same life word and stop writing to these
  // rings.
  void lose_link(const std::string& why) {
    if (!connection) return;
    settle([](const RingReader&) { return true; });
    lost_daemon = memory->daemon_identity();
    gap_channels.clear();
    for (const RingReader* rr : rings.all()) gap_channels.insert(rr->channel);
    drop_link();
    reconnect_failure = why;
    reconnect.lost(why, Reconnect::Clock::now());
    report_link_events();
  }

  std::string gone_reason() const {
    return daemon_description(endpoint, memory->daemon_identity().first) + " is gone";
  }

  // LinkEvents go to the callback here, between steps, never from inside a change.
  void report_link_events() {
    for (const LinkEvent& event : reconnect.take_events()) reconnect.deliver(event);
  }

  // One try to connect again and subscribe every channel and pattern. False if no daemon
  // answered, or it went away again; throws what a daemon that answered refused (every
  // try does, until it accepts), and Error(kDaemonGone) if reconnecting is off. Whatever
  // fails, the link is dropped, the next try scheduled, and the channels and patterns held
  // stay as the caller asked for them.
  bool try_reconnect() {
    if (!reconnect.options().enabled)
      throw Error(Errc::kDaemonGone,
                  reconnect_failure + "; reconnecting is off (ReconnectOptions::enabled)");
    const std::vector<std::string> held_channels = channels, held_patterns = patterns;
    try {
      connect_link();
      const bool new_daemon = memory->daemon_identity() != lost_daemon;
      // A restarted daemon's rings hold only what was published since it started, all of
      // it after we lost the old one: read the channels, ours and our patterns', from their
      // oldest message. The same daemon (it closed our connection) still has what we read:
      // from the latest.
      const StartAt start = new_daemon ? StartAt::earliest() : StartAt::latest();
      resubscribing = start;  // patterns' channels too (psubscribe_now)
      for (auto run : batches(held_channels))
        if (!run.empty()) subscribe_now(run, start);
      for (auto run : batches(held_patterns))
        if (!run.empty()) psubscribe_now(run);
      resubscribing.reset();
      reconnect.reconnected(daemon_description(endpoint, memory->daemon_identity().first) + " on " +
                                endpoint.socket_path + "; subscribed again to " +
                                std::to_string(channels.size()) + " channel(s) and " +
                                std::to_string(patterns.size()) + " pattern(s)",
                            new_daemon, Reconnect::Clock::now());
      report_link_events();
      return true;
    } catch (const Error& e) {
      resubscribing.reset();
      reconnect_failure = e.what();
      drop_link();
      channels = held_channels;
      patterns = held_patterns;
      reconnect.failed(Reconnect::Clock::now());
      if (!worth_retrying(e))
        throw Error(e.code(), std::string(e.what()) +
                                  " (while subscribing again after a reconnect; tried again "
                                  "on later calls)");
      return false;
    }
  }

  // Tries to reconnect, as the backoff allows, until `deadline`.
  bool reconnect_until(Reconnect::Clock::time_point deadline) {
    for (;;) {
      if (reconnect.due(Reconnect::Clock::now()) && try_reconnect()) return true;
      if (Reconnect::Clock::now() >= deadline) return false;
      std::this_thread::sleep_until(std::min(reconnect.next_try(), deadline));
    }
  }

  // Runs a subscription change on a working link, connecting again first if the daemon
  // went away (waiting up to ReconnectOptions::wait), and once more if the connection
  // turns out closed meanwhile.
  template <typename Change>
  void with_link(Change&& change) {
    const auto deadline = Reconnect::Clock::now() + reconnect.options().wait;
    for (int tries = 0;; ++tries) {
      if (connection && !memory->daemon_alive()) lose_link(gone_reason());
      if (!connection && !reconnect_until(deadline))
        throw Error(Errc::kDaemonGone,
                    reconnect_failure + "; still no daemon after " +
                        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           reconnect.options().wait)
                                           .count()) +
                        " ms (ReconnectOptions::wait); start shmbusd, or subscribe again later");
      try {
        change();
        return;
      } catch (const Error& e) {
        if (e.code() != Errc::kDaemonGone || tries >= 2) throw;
        lose_link(e.what());
      }
    }
  }

  std::string reconnect_failure;  // why the last try to reconnect failed
  // When the notifier is set to make fd() readable for the next reconnect try, if it is.
  std::optional<Reconnect::Clock::time_point> notifier_wake_at;

  // next() and next_view(): the next delivery, copied or (zero_copy) in place.
  std::optional<Message> next(std::chrono::nanoseconds timeout, bool zero_copy);

  void rearm_notifier() {
    if (notifier) notifier->rearm();
  }
};

Subscription::Subscription(std::unique_ptr<State> state) : state_(std::move(state)) {}
Subscription::Subscription(Subscription&&) noexcept = default;
Subscription& Subscription::operator=(Subscription&&) noexcept = default;
Subscription::~Subscription() = default;

Subscription Subscription::open(const ConnectOptions& options) {
  auto state = std::make_unique<State>(resolve_endpoint(options), options.reconnect);
  state->connect_link();
  return Subscription(std::move(state));
}

void Subscription::subscribe(std::span<const std::string> channels, StartAt start) {
  if (channels.empty())
    throw Error(Errc::kInvalidArgument,
                "ERR wrong number of arguments for 'subscribe' command: give at least one "
                "channel (to stop receiving, unsubscribe)");
  for (auto run : batches(channels)) state_->with_link([&] { state_->subscribe_now(run, start); });
}

void Subscription::psubscribe(std::span<const std::string> patterns) {
  if (patterns.empty())
    throw Error(Errc::kInvalidArgument,
                "ERR wrong number of arguments for 'psubscribe' command: give at least one "
                "pattern (to stop receiving, punsubscribe)");
  for (auto run : batches(patterns)) state_->with_link([&] { state_->psubscribe_now(run); });
}

void Subscription::unsubscribe(std::span<const std::string> channels) {
  State& s = *state_;
  if (!s.connection) {  // away from the daemon: the next link subscribes only what is left
    forget(s.channels, channels);
    return;
  }
  for (auto run : batches(channels)) s.with_link([&] { s.unsubscribe_now(run); });
}

void Subscription::punsubscribe(std::span<const std::string> patterns) {
  State& s = *state_;
  if (!s.connection) {
    forget(s.patterns, patterns);
    return;
  }
  for (auto run : batches(patterns)) s.with_link([&] { s.punsubscribe_now(run); });
}

void Subscription::State::subscribe_now(std::span<const std::string> channels, StartAt start) {
  State& s = *this;
  for (const auto& name : channels) validate_channel_name(name);
  s.apply_waiting_events();
  // (Subscribing again after a reconnect adds no reason: nothing to settle.)
  if (!s.resubscribing)
    s.settle([&](const RingReader& rr) {
      return std::find(channels.begin(), channels.end(), rr.channel) != channels.end();
    });
  Writer w = s.connection->next_request(Type::kSubscribe);
  w.u8(static_cast<uint8_t>(start.kind)).u64(start.sequence);
  const OwnedFrame reply = s.request(write_names(w, channels));
  // Names first, so the readers added below count the channel delivery.
  for (const auto& name : channels)
    if (!s.holds_channel(name)) s.channels.push_back(name);
  try {
    s.apply_subscribed(reply, start);
    s.report_corrupt_rings();
  } catch (const Error&) {
    // The daemon stopped at the first failure: keep only what it confirmed.
    std::erase_if(s.channels, [&](const std::string& name) {
      for (const RingReader* rr : s.rings.all())
        if (rr->channel == name) return false;
      return true;
    });
    for (RingReader* rr : s.rings.all()) s.refresh_reasons(*rr);
    throw;
  }
}

void Subscription::subscribe(std::initializer_list<std::string_view> channels, StartAt start) {
  subscribe(to_strings(channels), start);
}

void Subscription::State::psubscribe_now(std::span<const std::string> patterns) {
  State& s = *this;
  for (const auto& pattern : patterns) validate_pattern(pattern);
  s.apply_waiting_events();
  if (!s.resubscribing)
    s.settle([&](const RingReader& rr) {
      return std::any_of(patterns.begin(), patterns.end(),
                         [&](const std::string& p) { return glob_match(p, rr.channel); });
    });
  Writer w = s.connection->next_request(Type::kPsubscribe);
  const OwnedFrame reply = s.request(write_names(w, patterns));
  for (const auto& pattern : patterns)
    if (std::find(s.patterns.begin(), s.patterns.end(), pattern) == s.patterns.end())
      s.patterns.push_back(pattern);
  for (RingReader* rr : s.rings.all()) s.refresh_reasons(*rr);  // channels already read
  // A pattern's existing channels start at their latest message (Redis) - except those of a
  // restarted daemon we subscribe to again, which hold only what we would have missed.
  s.apply_subscribed(reply, s.resubscribing.value_or(StartAt::latest()));
  s.report_corrupt_rings();
}

void Subscription::psubscribe(std::initializer_list<std::string_view> patterns) {
  psubscribe(to_strings(patterns));
}

void Subscription::State::unsubscribe_now(std::span<const std::string> channels) {
  State& s = *this;
  Writer w = s.connection->next_request(Type::kUnsubscribe);
  const OwnedFrame reply = s.request(write_names(w, channels));
  s.settle([&](const RingReader& rr) {
    return rr.by_name && (channels.empty() || std::find(channels.begin(), channels.end(),
                                                        rr.channel) != channels.end());
  });
  forget(s.channels, channels);
  for (RingReader* rr : s.rings.all()) s.refresh_reasons(*rr);
  s.apply_unsubscribed(reply);
}

void Subscription::unsubscribe(std::initializer_list<std::string_view> channels) {
  unsubscribe(to_strings(channels));
}

void Subscription::State::punsubscribe_now(std::span<const std::string> patterns) {
  State& s = *this;
  Writer w = s.connection->next_request(Type::kPunsubscribe);
  const OwnedFrame reply = s.request(write_names(w, patterns));
  s.settle([&](const RingReader& rr) {
    return std::any_of(rr.patterns.begin(), rr.patterns.end(), [&](const std::string& p) {
      return patterns.empty() || std::find(patterns.begin(), patterns.end(), p) != patterns.end();
    });
  });
  forget(s.patterns, patterns);
  for (RingReader* rr : s.rings.all()) s.refresh_reasons(*rr);
  s.apply_unsubscribed(reply);
}

void Subscription::punsubscribe(std::initializer_list<std::string_view> patterns) {
  punsubscribe(to_strings(patterns));
}

std::optional<Message> Subscription::next(std::chrono::nanoseconds timeout) {
  // A view still held from next_view() becomes a copy: next() promises private bytes.
  state_->release_view(true);
  return state_->next(timeout, false);
}

std::optional<Message> Subscription::next_view(std::chrono::nanoseconds timeout) {
  return state_->next(timeout, true);
}

bool Subscription::intact() {
  State& s = *state_;
  if (!s.current.held) return true;
  const RingReader* rr = s.reader_at(s.current.bit);
  s.current.found_intact = rr != nullptr && rr->reader->intact(s.current.view);
  return s.current.found_intact;
}

std::optional<Message> Subscription::State::next(std::chrono::nanoseconds timeout, bool zero_copy) {
  State& s = *this;
  const bool forever = timeout.count() < 0;
  // The clock is read only once there is nothing to deliver: a message already waiting
  // costs no clock read (~20 ns, as much as the ring read itself).
  std::optional<std::chrono::steady_clock::time_point> deadline;
  for (;;) {
    // 0. Deliveries settled by a subscription change, with no ring to merge them with (the
    // link is gone, or the last channel went): they are in publish order already.
    if (!s.settled.empty() && !s.merges()) return s.pop_settled();
    // 1. The rest of the current message's deliveries (message, then each pmessage).
    if (s.current.next < s.current.count) {
      const RingReader* rr = s.reader_at(s.current.bit);
      if (rr != nullptr && s.current.next < rr->deliveries()) {
        // Views of the reader's own names: they change only with the subscription, and a
        // Message is valid only until then.
        const size_t index = s.current.next++;
        return make_message(rr->channel, rr->pattern_of(index), s.current.bytes, s.current.info,
                            s.current.gap);
      }
      s.current.next = s.current.count = 0;
    }
    // Every delivery of the held message is out: let its frame go before reading more.
    s.release_view(false);
    // Away from the daemon (what its rings held is delivered): reconnect when a try is due,
    // else wait for it within the timeout.
    if (!s.connection) {
      const auto now = Reconnect::Clock::now();
      if (s.reconnect.due(now) && s.try_reconnect()) continue;
      if (!deadline) deadline = now + (forever ? std::chrono::nanoseconds(0) : timeout);
      s.notify_at_next_try();
      if (timeout.count() == 0 || (!forever && now >= *deadline)) return std::nullopt;
      std::this_thread::sleep_until(forever ? s.reconnect.next_try()
                                            : std::min(s.reconnect.next_try(), *deadline));
      continue;
    }
    // 2. Control events (new channels for our patterns, reclaimed channels).
    if (s.control_pending) {
      s.poll_control();
      // A detach settles the channel's last messages into `settled`: deliver them now, not
      // after the next wake-up (which may never come for a channel that is gone). A closed
      // connection dropped the link: the top of the loop connects again.
      if (!s.settled.empty() || !s.connection) continue;
    }
    // 3. Several rings (or settled messages beside one): the earliest published goes first.
    if (s.merges()) {
      const State::Next picked = s.read_in_order(zero_copy);
      if (picked == State::Next::kSettled) return s.pop_settled();
      if (picked == State::Next::kRing) continue;
      if (s.control_pending) continue;  // step 2 first: it may bring an earlier message
    } else {
      if (s.staged_count > 0) s.unstage_all();  // one ring left: read from its staged head
      // 3'. One ring by name: what it holds, in ring order (the only order there is).
      while (s.rings.has_ready()) {
        RingReader* ring = s.rings.pop_ready();
        if (ring == nullptr) continue;
        // Step 4 finds it again while it holds more.
        if (s.read_ring(*ring, zero_copy) && s.begin_delivery(*ring)) break;
      }
      if (s.current.next < s.current.count) continue;
      // 4. The ring itself, before the doorbell.
      if (s.read_rings_directly(zero_copy)) continue;
    }
    // 5. Take the bits publishers set since we last looked.
    if (s.must_take_bits() && s.take_bits() > 0) continue;
    // 6. Nothing anywhere: wait (spin briefly, then sleep on the doorbell's futex) - unless
    // the daemon is gone: then what its rings still hold goes to `settled`, and the link.
    if (!s.memory->daemon_alive()) {
      s.lose_link(s.gone_reason());
      continue;
    }
    s.rearm_notifier();
    if (timeout.count() == 0) return std::nullopt;  // a poll: no clock read, it costs as much
    const auto now = std::chrono::steady_clock::now();
    if (!deadline) deadline = now + (forever ? std::chrono::nanoseconds(0) : timeout);
    if (!forever && now >= *deadline) return std::nullopt;
    if (s.wait_for_news(forever ? std::chrono::nanoseconds(-1) : *deadline - now) ==
        Status::kTimedOut)
      return std::nullopt;
  }
}

void Subscription::set_local_only(bool local_only) {
  State& s = *state_;
  s.local_only = local_only;
  if (!s.connection) return;  // the next link's doorbell gets it (connect_link)
  s.doorbell->local_only.store(local_only ? 1 : 0, std::memory_order_seq_cst);
  if (local_only) return;  // a publisher that missed it wakes us once more: harmless
  // Turned off: a publisher that still saw it set may have skipped ringing for an imported
  // message. After the fence every later publish rings; look at every ring once for the
  // ones before.
  full_fence();
  for (RingReader* rr : s.rings.all()) s.enqueue(rr->bit);
  s.doorbell_rang = true;
}

void Subscription::set_spin(std::chrono::nanoseconds spin) {
  state_->spin = std::max(spin, std::chrono::nanoseconds(0));
}

int Subscription::fd() {
  State& s = *state_;
  if (!s.notifier) {
    s.notifier = std::make_unique<Notifier>();
    if (s.connection)
      s.watch_doorbell();
    else
      s.notifier->wake_at(s.reconnect.next_try());
  }
  return s.notifier->fd();
}

LinkStats Subscription::link_stats() const {
  return state_->reconnect.stats();
}

std::size_t Subscription::count() const {
  return state_->channels.size() + state_->patterns.size();
}
std::vector<std::string> Subscription::channels() const {
  return state_->channels;
}
std::vector<std::string> Subscription::patterns() const {
  return state_->patterns;
}

}  // namespace shmbus
