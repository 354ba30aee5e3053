// The requests answered over several event-loop turns (see requests.hpp and turn.hpp).
// Each job works until the turn is spent or its client has as many reply bytes unread as it
// may (Connections::output_room), then yields; Connections resumes it in a later turn. A
// job sends what it has before it yields, so an event about a channel (a detach, a new
// ring) never reaches the client before the reply frame that told it of the channel.
#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "glob.hpp"
#include "requests.hpp"

namespace shmbus::daemon {

using namespace protocol;

namespace {

// Reply frames are kept to half the frame limit (a pattern over 100,000 channels, 10,000
// patterns of 1 KiB): the last one is flagged final.
constexpr size_t kReplyFrameBytes = kMaxFrameBytes / 2;

}  // namespace

// A SUBSCRIBED reply, sent in frames as its attachments come.
class Requests::SubscribedReply {
 public:
  SubscribedReply(Requests& requests, uint32_t request) : requests_(requests), request_(request) {}

  void add(protocol::Attachment a) {
    pending_bytes_ += Subscriptions::reply_bytes(a);
    pending_.push_back(std::move(a));
  }
  // Bytes a job may still add to the frame being built without outgrowing what `c` may be
  // sent (0: send what is pending and wait).
  size_t room(const Client& c) const {
    const size_t frame_room =
        pending_bytes_ < kReplyFrameBytes ? kReplyFrameBytes - pending_bytes_ : 0;
    return std::min(frame_room, requests_.reply_room(c));
  }
  // Sends what is pending (nothing if nothing is), not final.
  void flush(Client& c) {
    if (!pending_.empty()) send(c, false, Errc::kLimit, {});
  }
  // Sends the final frame, with what is pending and the error that stopped the request.
  void finish(Client& c, const std::optional<Error>& error) {
    send(c, true, error ? error->code() : Errc::kLimit, error ? error->what() : std::string());
  }

 private:
  void send(Client& c, bool final, Errc error_code, const std::string& error) {
    size_t next = 0;
    do {
      size_t end = next, bytes = 64;
      while (end < pending_.size() && bytes < kReplyFrameBytes)
        bytes += Subscriptions::reply_bytes(pending_[end++]);
      const bool last = end == pending_.size();
      Writer w(Type::kSubscribed, request_);
      w.u8(final && last ? 1 : 0).u32(static_cast<uint32_t>(end - next));
      for (size_t i = next; i < end; ++i) pending_[i].write(w);
      if (final && last)
        w.u32(static_cast<uint32_t>(c.channels.size() + c.patterns.size()))
            .u16(error.empty() ? 0 : static_cast<uint16_t>(error_code))
            .str(error);
      requests_.send(c, w);
      next = end;
    } while (next < pending_.size());
    pending_.clear();
    pending_bytes_ = 64;
  }

  Requests& requests_;
  const uint32_t request_;
  std::vector<protocol::Attachment> pending_;
  size_t pending_bytes_ = 64;  // the frame's header and the final fields, and pending_
};

// SUBSCRIBE: channel by channel, each created if it does not exist. As Redis, it stops at
// the first channel it cannot subscribe: what succeeded stands, and the client learns both.
class Requests::SubscribeJob final : public RequestJob {
 public:
  SubscribeJob(Requests& requests, uint32_t request, StartKind start,
               std::vector<std::string> names)
      : RequestJob(request),
        r_(requests),
        start_(start),
        names_(std::move(names)),
        reply_(requests, request) {}

  bool resume(Client& c) override {
    std::optional<Error> error;
    for (bool first = true; next_ < names_.size(); first = false) {
      if (!first && (r_.turn_.spent() || reply_.room(c) == 0)) {
        reply_.flush(c);
        return false;
      }
      const std::string& name = names_[next_];
      if (c.channels.count(name)) {
        // Already held: report the slot again so the client's view is complete.
        if (const ChannelState* ch = r_.registry_.find(name))
          reply_.add(r_.subscriptions_.describe_held(c, *ch));
        ++next_;
        continue;
      }
      try {
        ChannelState& ch = r_.find_or_create(c, name, nullptr).channel;
        reply_.add(r_.subscriptions_.subscribe_channel(c, ch, start_));
        ++next_;
      } catch (const Error& e) {
        error = e;
        break;
      }
    }
    reply_.finish(c, error);
    return true;
  }

 private:
  Requests& r_;
  const StartKind start_;
  const std::vector<std::string> names_;
  size_t next_ = 0;  // the next name to subscribe
  SubscribedReply reply_;
};

// PSUBSCRIBE: each pattern is held from its first slice on (so channels created meanwhile
// match it), then walked over the live channels. The client's reply comes once every
// channel was looked at: whatever is published after it reaches the client, as in Redis.
class Requests::PsubscribeJob final : public RequestJob {
 public:
  PsubscribeJob(Requests& requests, uint32_t request, std::vector<std::string> patterns)
      : RequestJob(request),
        r_(requests),
        patterns_(std::move(patterns)),
        reply_(requests, request) {}

  bool resume(Client& c) override {
    while (next_ < patterns_.size()) {
      const std::string& pattern = patterns_[next_];
      if (!walking_) {
        if (!r_.subscriptions_.add_pattern(c, pattern)) {
          ++next_;  // held already
          continue;
        }
        walking_ = true;
        next_channel_ = 0;
      }
      const size_t room = reply_.room(c);
      std::vector<protocol::Attachment> attached;
      const bool done = room != 0 && r_.subscriptions_.attach_existing(c, pattern, next_channel_,
                                                                       attached, room, error_);
      for (protocol::Attachment& a : attached) reply_.add(std::move(a));
      if (!done) {
        reply_.flush(c);
        return false;
      }
      walking_ = false;
      ++next_;
      if (next_ < patterns_.size() && r_.turn_.spent()) {
        reply_.flush(c);
        return false;
      }
    }
    reply_.finish(c, error_);
    return true;
  }

 private:
  Requests& r_;
  const std::vector<std::string> patterns_;
  size_t next_ = 0;            // the pattern being walked, or the next one
  bool walking_ = false;       // patterns_[next_] is held and being walked
  uint32_t next_channel_ = 0;  // the walk's next channel id
  std::optional<Error> error_;
  SubscribedReply reply_;
};

// PATTERNS: the bus's patterns (matching the filter, if any) in frames, the last flagged
// final, so 10,000 patterns of 1 KiB each still fit the protocol.
class Requests::PatternsJob final : public RequestJob {
 public:
  PatternsJob(Requests& requests, uint32_t request, std::string filter)
      : RequestJob(request), r_(requests), filter_(std::move(filter)) {}

  bool resume(Client& c) override {
    const Subscriptions::PatternIndex& index = r_.subscriptions_.pattern_index();
    // By key: patterns come and go between turns.
    auto it = last_ ? index.upper_bound(*last_) : index.begin();
    for (bool first = true;; first = false) {
      if (!first && (r_.turn_.spent() || r_.reply_room(c) == 0)) return false;
      std::vector<std::pair<const std::string*, uint32_t>> batch;
      size_t bytes = 64;
      for (size_t work = 0; it != index.end() && bytes < kReplyFrameBytes; ++it) {
        if (work != 0 && r_.turn_.spent_after(work)) break;
        last_ = it->first;
        work = glob_match_work(filter_, it->first);
        if (!filter_.empty() && !glob_match(filter_, it->first)) continue;
        batch.emplace_back(&it->first, static_cast<uint32_t>(it->second.size()));
        bytes += 8 + it->first.size();
      }
      const bool final = it == index.end();
      if (!batch.empty() || final) {
        Writer w(Type::kPatternList, request());
        w.u8(final ? 1 : 0).u32(static_cast<uint32_t>(batch.size()));
        for (const auto& [pattern, subscribers] : batch) w.str(*pattern).u32(subscribers);
        r_.send(c, w);
      }
      if (final) return true;
    }
  }

 private:
  Requests& r_;
  const std::string filter_;
  std::optional<std::string> last_;  // the last pattern looked at
};

// OPEN_CHANNEL of a channel still being matched against the patterns (Subscriptions): its
// publisher learns where the ring is once every pattern subscriber is attached.
class Requests::OpenChannelJob final : public RequestJob {
 public:
  OpenChannelJob(Requests& requests, OpenRequest open)
      : RequestJob(open.request), r_(requests), open_(std::move(open)) {}

  bool resume(Client& c) override { return r_.try_open(c, open_); }

 private:
  Requests& r_;
  const OpenRequest open_;
};

std::unique_ptr<RequestJob> Requests::subscribe_job(uint32_t request, StartKind start,
                                                    std::vector<std::string> names) {
  return std::make_unique<SubscribeJob>(*this, request, start, std::move(names));
}

std::unique_ptr<RequestJob> Requests::psubscribe_job(uint32_t request,
                                                     std::vector<std::string> patterns) {
  return std::make_unique<PsubscribeJob>(*this, request, std::move(patterns));
}

std::unique_ptr<RequestJob> Requests::patterns_job(uint32_t request, std::string filter) {
  return std::make_unique<PatternsJob>(*this, request, std::move(filter));
}

std::unique_ptr<RequestJob> Requests::open_channel_job(OpenRequest open) {
  return std::make_unique<OpenChannelJob>(*this, std::move(open));
}

void Requests::start(Client& c, std::unique_ptr<RequestJob> job) {
  c.job = std::move(job);
  resume(c);
}

void Requests::resume(Client& c) {
  try {
    if (c.job->resume(c)) c.job.reset();
  } catch (const Error& e) {
    const uint32_t request = c.job->request();
    c.job.reset();
    reply_error(c, request, e.code(), e.what());
  }
}

size_t Requests::reply_room(const Client& c) const {
  return connections_.output_room(c);
}

}  // namespace shmbus::daemon
