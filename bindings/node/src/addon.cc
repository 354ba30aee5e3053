// shmbus's Node.js addon: the native layer under lib/index.js, over libshmbus's C API
// (shmbus.h; node-gyp compiles without C++ exceptions, and none crosses the C API).
//   - Bus: publish and PUBSUB introspection, synchronous (a publish never waits on an
//     ordinary channel; it copies into shared memory and returns).
//   - Subscriber: delivery on Node's own loop. The subscription's descriptor is
//     level-triggered (readable while a message may wait), watched with uv_poll: each
//     wake-up drains a bounded batch and makes one call into JavaScript with all of it, so
//     the loop never blocks and no thread is added. The poll handle keeps the process alive
//     only while something is subscribed (uv_ref / uv_unref), as an idle socket would not.
#include <napi.h>
#include <shmbus/shmbus.h>
#include <uv.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace {

// Messages taken per wake-up before handing the loop back: large enough that a busy
// channel costs one JavaScript call per batch, small enough that other work on the loop
// (timers, sockets) waits at most one batch. A full batch leaves the descriptor readable,
// so the loop comes back to it on its next turn.
constexpr size_t kBatchMessages = 1024;

// A batch also stops once its payloads pass this many bytes, so it holds at most one
// large message more than that.
constexpr size_t kBatchBytes = 4 << 20;

// Distinct names a subscriber numbers before it starts over (see OnReadable).
constexpr size_t kMaxNames = 4096;

// The code JavaScript sees in error.code for a C API status.
const char* code_name(int status) {
  switch (status) {
    case SHMBUS_ENODAEMON: return "SHMBUS_ENODAEMON";
    case SHMBUS_EDAEMONGONE: return "SHMBUS_EDAEMONGONE";
    case SHMBUS_EPROTOCOL: return "SHMBUS_EPROTOCOL";
    case SHMBUS_EINVAL: return "SHMBUS_EINVAL";
    case SHMBUS_ETOOLARGE: return "SHMBUS_ETOOLARGE";
    case SHMBUS_ELIMIT: return "SHMBUS_ELIMIT";
    case SHMBUS_EWOULDBLOCK: return "SHMBUS_EWOULDBLOCK";
    case SHMBUS_ETIMEDOUT: return "SHMBUS_ETIMEDOUT";
    case SHMBUS_ESYSTEM: return "SHMBUS_ESYSTEM";
    case SHMBUS_ECORRUPT: return "SHMBUS_ECORRUPT";
    case SHMBUS_EPERMISSION: return "SHMBUS_EPERMISSION";
    case SHMBUS_ENOMEM: return "SHMBUS_ENOMEM";
    case SHMBUS_EREFUSED: return "SHMBUS_EREFUSED";
    default: return "SHMBUS_EINTERNAL";
  }
}

// An Error for a failed call: the library's full text (it names the limit and the way
// out) and the status as `code`.
Napi::Error error_of(Napi::Env env, int status) {
  const char* text = shmbus_last_error();
  Napi::Error error = Napi::Error::New(env, *text != '\0' ? text : shmbus_strerror(status));
  error.Set("code", Napi::String::New(env, code_name(status)));
  return error;
}

// The bytes of a name or payload given as a string (UTF-8) or a Buffer / typed array.
// False, with a TypeError pending, for anything else.
// A typed array's bytes, in place: napi_get_typedarray_info's data already includes the
// view's offset and, unlike ArrayBuffer().Data(), works for a SharedArrayBuffer's views.
void view_of(const Napi::Value& value, const char*& data, size_t& len) {
  void* p = nullptr;
  napi_get_typedarray_info(value.Env(), value, nullptr, nullptr, &p, nullptr, nullptr);
  data = static_cast<const char*>(p);
  len = p == nullptr ? 0 : value.As<Napi::TypedArray>().ByteLength();
}

bool bytes_of(const Napi::Value& value, const char* what, std::string& out) {
  if (value.IsString()) {
    out = value.As<Napi::String>().Utf8Value();
    return true;
  }
  if (value.IsTypedArray()) {
    const char* data = nullptr;
    size_t len = 0;
    view_of(value, data, len);
    out.assign(data == nullptr ? "" : data, len);
    return true;
  }
  Napi::TypeError::New(value.Env(), std::string(what) + " must be a string or a Buffer")
      .ThrowAsJavaScriptException();
  return false;
}

// Connection options from JavaScript: { bus, socket, clientName }, each optional (the
// environment's $SHMBUS_BUS / $SHMBUS_SOCKET otherwise). Keeps the strings alive.
struct Options {
  std::string bus, socket, client_name;
  shmbus_options c{};
  explicit Options(const Napi::Value& value) {
    shmbus_options_init(&c);
    c.client_name = "node";
    if (!value.IsObject()) return;
    const Napi::Object o = value.As<Napi::Object>();
    if (o.Get("bus").IsString()) {
      bus = o.Get("bus").As<Napi::String>().Utf8Value();
      c.bus = bus.c_str();
    }
    if (o.Get("socket").IsString()) {
      socket = o.Get("socket").As<Napi::String>().Utf8Value();
      c.socket_path = socket.c_str();
    }
    if (o.Get("clientName").IsString()) {
      client_name = o.Get("clientName").As<Napi::String>().Utf8Value();
      c.client_name = client_name.c_str();
    }
  }
};

// A list of names from a JavaScript array of strings / Buffers, as the C API takes them.
struct Names {
  std::vector<std::string> bytes;
  std::vector<const char*> pointers;
  std::vector<size_t> lengths;
  bool load(const Napi::Value& value, const char* what) {
    if (!value.IsArray()) {
      Napi::TypeError::New(value.Env(), std::string(what) + "s must be an array")
          .ThrowAsJavaScriptException();
      return false;
    }
    const Napi::Array array = value.As<Napi::Array>();
    bytes.resize(array.Length());
    for (uint32_t i = 0; i < array.Length(); ++i)
      if (!bytes_of(array.Get(i), what, bytes[i])) return false;
    for (const std::string& b : bytes) {
      pointers.push_back(b.data());
      lengths.push_back(b.size());
    }
    return true;
  }
};

// How long a publish waits on a full back-pressure channel, as Bus::publish does.
constexpr int64_t kPublishWaitNs = 5'000'000'000;

// The payload of a publish: a typed array's bytes in place, else a string's UTF-8 in
// `text`. False, with a TypeError pending, for anything else.
bool payload_of(const Napi::Value& value, std::string& text, const char*& data, size_t& len) {
  if (value.IsTypedArray()) {
    view_of(value, data, len);
    return true;
  }
  if (!bytes_of(value, "message", text)) return false;
  data = text.data();
  len = text.size();
  return true;
}

// Per Node environment (main thread or worker): the Channel class, to make instances.
struct AddonData {
  Napi::FunctionReference channel_class;
};

// An open channel (Bus.openChannel): the publishing fast path, which lib/index.js keeps
// per channel name, so a publish neither converts nor looks up the name.
class Channel : public Napi::ObjectWrap<Channel> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "Channel",
        {InstanceMethod<&Channel::Publish>("publish"), InstanceMethod<&Channel::Close>("close")});
  }
  explicit Channel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Channel>(info) {}
  ~Channel() override { shmbus_channel_close(channel_); }
  // Takes the handle (from shmbus_channel_open).
  void Adopt(shmbus_channel* channel) { channel_ = channel; }

 private:
  // publish(message) -> receivers.
  Napi::Value Publish(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (channel_ == nullptr) {
      Napi::Error error = Napi::Error::New(env, "this shmbus connection is closed");
      error.Set("code", Napi::String::New(env, "SHMBUS_ECLOSED"));
      error.ThrowAsJavaScriptException();
      return env.Undefined();
    }
    std::string text;
    const char* data = nullptr;
    size_t len = 0;
    if (!payload_of(info[0], text, data, len)) return env.Undefined();
    uint32_t receivers = 0;
    const int status = shmbus_channel_publish(channel_, data, len, kPublishWaitNs, &receivers);
    if (status != SHMBUS_OK) {
      error_of(env, status).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, receivers);
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    shmbus_channel_close(channel_);
    channel_ = nullptr;
    return info.Env().Undefined();
  }

  shmbus_channel* channel_ = nullptr;  // owned; used on the JavaScript thread only
};

class Bus : public Napi::ObjectWrap<Bus> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "Bus",
        {InstanceMethod<&Bus::Publish>("publish"), InstanceMethod<&Bus::OpenChannel>("openChannel"),
         InstanceMethod<&Bus::Channels>("channels"), InstanceMethod<&Bus::Numsub>("numsub"),
         InstanceMethod<&Bus::Numpat>("numpat"), InstanceMethod<&Bus::Close>("close")});
  }

  explicit Bus(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Bus>(info) {
    Options options(info[0]);
    const int status = shmbus_connect(&options.c, &bus_);
    if (status != SHMBUS_OK) error_of(info.Env(), status).ThrowAsJavaScriptException();
  }
  ~Bus() override { shmbus_bus_close(bus_); }

 private:
  bool open(Napi::Env env) {
    if (bus_ != nullptr) return true;
    Napi::Error error = Napi::Error::New(env, "this shmbus connection is closed");
    error.Set("code", Napi::String::New(env, "SHMBUS_ECLOSED"));
    error.ThrowAsJavaScriptException();
    return false;
  }

  // publish(channel, message) -> receivers, as Redis's PUBLISH.
  Napi::Value Publish(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (!open(env)) return env.Undefined();
    // The payload is read in place when it is a Buffer: no copy before the ring's.
    std::string channel;
    if (!bytes_of(info[0], "channel", channel)) return env.Undefined();
    std::string text;
    const char* data = nullptr;
    size_t len = 0;
    if (!payload_of(info[1], text, data, len)) return env.Undefined();
    uint32_t receivers = 0;
    const int status = shmbus_publish(bus_, channel.data(), channel.size(), data, len, &receivers);
    if (status != SHMBUS_OK) {
      error_of(env, status).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, receivers);
  }

  // openChannel(name) -> Channel: opens (creating if need be) the channel for publishing.
  Napi::Value OpenChannel(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (!open(env)) return env.Undefined();
    std::string name;
    if (!bytes_of(info[0], "channel", name)) return env.Undefined();
    shmbus_channel* channel = nullptr;
    const int status = shmbus_channel_open(bus_, name.data(), name.size(), &channel);
    if (status != SHMBUS_OK) {
      error_of(env, status).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Object out = env.GetInstanceData<AddonData>()->channel_class.New({});
    Channel::Unwrap(out)->Adopt(channel);
    return out;
  }

  // channels(pattern?) -> [Buffer]: PUBSUB CHANNELS.
  Napi::Value Channels(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (!open(env)) return env.Undefined();
    std::string pattern;
    if (!info[0].IsUndefined() && !info[0].IsNull() && !bytes_of(info[0], "pattern", pattern))
      return env.Undefined();
    shmbus_names* names = nullptr;
    const int status = shmbus_pubsub_channels(bus_, pattern.data(), pattern.size(), &names);
    if (status != SHMBUS_OK) {
      error_of(env, status).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Array out = Napi::Array::New(env, shmbus_names_count(names));
    for (size_t i = 0; i < shmbus_names_count(names); ++i) {
      size_t len = 0;
      const char* name = shmbus_names_at(names, i, &len);
      out.Set(static_cast<uint32_t>(i), Napi::Buffer<char>::Copy(env, name, len));
    }
    shmbus_names_free(names);
    return out;
  }

  // numsub([channel]) -> [count]: PUBSUB NUMSUB.
  Napi::Value Numsub(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (!open(env)) return env.Undefined();
    Names names;
    if (!names.load(info[0], "channel")) return env.Undefined();
    std::vector<uint64_t> counts(names.bytes.size());
    const int status = shmbus_pubsub_numsub(bus_, names.pointers.data(), names.lengths.data(),
                                            names.bytes.size(), counts.data());
    if (status != SHMBUS_OK) {
      error_of(env, status).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Array out = Napi::Array::New(env, counts.size());
    for (size_t i = 0; i < counts.size(); ++i)
      out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(counts[i])));
    return out;
  }

  // numpat() -> count: PUBSUB NUMPAT.
  Napi::Value Numpat(const Napi::CallbackInfo& info) {
    const Napi::Env env = info.Env();
    if (!open(env)) return env.Undefined();
    uint64_t count = 0;
    const int status = shmbus_pubsub_numpat(bus_, &count);
    if (status != SHMBUS_OK) {
      error_of(env, status).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, static_cast<double>(count));
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    shmbus_bus_close(bus_);
    bus_ = nullptr;
    return info.Env().Undefined();
  }

  shmbus_bus* bus_ = nullptr;  // owned; used on the JavaScript thread only
};

class Subscriber;
// The poll handle, apart from its Subscriber: it outlives it until uv_close's callback, and
// an async cleanup hook makes a worker's teardown wait for that callback (which is code of
// this addon, unloaded right after).
struct Watch {
  uv_poll_t poll;
  Subscriber* owner = nullptr;
  napi_async_cleanup_hook_handle hook = nullptr;
};

class Subscriber : public Napi::ObjectWrap<Subscriber> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "Subscriber",
        {InstanceMethod<&Subscriber::Subscribe>("subscribe"),
         InstanceMethod<&Subscriber::Psubscribe>("psubscribe"),
         InstanceMethod<&Subscriber::Unsubscribe>("unsubscribe"),
         InstanceMethod<&Subscriber::Punsubscribe>("punsubscribe"),
         InstanceMethod<&Subscriber::Count>("count"), InstanceMethod<&Subscriber::Close>("close")});
  }

  // new Subscriber(options, onBatch, onError): onBatch(data, meta, names, reset) gets the
  // batches (see OnReadable), onError(error) a failure of the delivery.
  explicit Subscriber(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Subscriber>(info) {
    const Napi::Env env = info.Env();
    if (!info[1].IsFunction() || !info[2].IsFunction()) {
      Napi::TypeError::New(env, "Subscriber(options, onBatch, onError)")
          .ThrowAsJavaScriptException();
      return;
    }
    // Kept on the wrapper, not in persistent references: those would keep the wrapper (via
    // the closures over the JavaScript Subscriber) alive forever.
    info.This().As<Napi::Object>().Set("onBatch", info[1]);
    info.This().As<Napi::Object>().Set("onError", info[2]);
    Options options(info[0]);
    int status = shmbus_sub_open(&options.c, &sub_);
    int fd = -1;
    if (status == SHMBUS_OK) status = shmbus_sub_fd(sub_, &fd);
    if (status != SHMBUS_OK) {
      error_of(env, status).ThrowAsJavaScriptException();
      return;
    }
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    poll_ = new Watch;
    poll_->poll.data = poll_;
    poll_->owner = this;
    if (uv_poll_init(loop, &poll_->poll, fd) != 0) {
      delete poll_;
      poll_ = nullptr;
      Napi::Error::New(env, "uv_poll_init failed on the subscription's descriptor")
          .ThrowAsJavaScriptException();
      return;
    }
    napi_add_async_cleanup_hook(env, &Subscriber::OnTeardown, poll_, &poll_->hook);
    uv_unref(reinterpret_cast<uv_handle_t*>(&poll_->poll));  // nothing subscribed yet
    uv_poll_start(&poll_->poll, UV_READABLE, &Subscriber::OnReadable);
  }
  ~Subscriber() override { Release(); }

 private:
  // Stops the watch and frees the handle (libuv frees it only after its close callback),
  // then the subscription, whose descriptor the watch was on.
  void Release() {
    if (poll_ != nullptr) {
      uv_poll_stop(&poll_->poll);
      poll_->owner = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&poll_->poll), [](uv_handle_t* handle) {
        auto* watch = static_cast<Watch*>(handle->data);
        if (watch->hook != nullptr) napi_remove_async_cleanup_hook(watch->hook);
        delete watch;
      });
      poll_ = nullptr;
    }
    shmbus_sub_close(sub_);
    sub_ = nullptr;
  }

  // A worker's teardown: close now; the teardown waits for uv_close's callback.
  static void OnTeardown(napi_async_cleanup_hook_handle handle, void* arg) {
    auto* watch = static_cast<Watch*>(arg);
    watch->hook = handle;
    if (watch->owner != nullptr) watch->owner->Release();
  }

  bool open(Napi::Env env) {
    if (sub_ != nullptr) return true;
    Napi::Error error = Napi::Error::New(env, "this shmbus subscriber is closed");
    error.Set("code", Napi::String::New(env, "SHMBUS_ECLOSED"));
    error.ThrowAsJavaScriptException();
    return false;
  }

  // The loop keeps running for this subscriber only while it holds something, and the
  // object stays alive meanwhile (as a subscribed socket would), even if JavaScript drops
  // every reference to it.
  void UpdateRef() {
    if (poll_ == nullptr) return;
    const bool holding = shmbus_sub_count(sub_) > 0;
    if (holding)
      uv_ref(reinterpret_cast<uv_handle_t*>(&poll_->poll));
    else
      uv_unref(reinterpret_cast<uv_handle_t*>(&poll_->poll));
    if (holding && !pinned_) Ref();
    if (!holding && pinned_) Unref();
    pinned_ = holding;
  }

  template <typename Call>
  Napi::Value Change(const Napi::CallbackInfo& info, const char* what, Call&& call) {
    const Napi::Env env = info.Env();
    if (!open(env)) return env.Undefined();
    Names names;
    if (!names.load(info[0], what)) return env.Undefined();
    const int status = call(names);
    UpdateRef();
    if (status != SHMBUS_OK) {
      error_of(env, status).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, static_cast<double>(shmbus_sub_count(sub_)));
  }
  Napi::Value Subscribe(const Napi::CallbackInfo& info) {
    return Change(info, "channel", [&](Names& n) {
      return shmbus_subscribe(sub_, n.pointers.data(), n.lengths.data(), n.bytes.size(),
                              SHMBUS_START_LATEST, 0);
    });
  }
  Napi::Value Psubscribe(const Napi::CallbackInfo& info) {
    return Change(info, "pattern", [&](Names& n) {
      return shmbus_psubscribe(sub_, n.pointers.data(), n.lengths.data(), n.bytes.size());
    });
  }
  Napi::Value Unsubscribe(const Napi::CallbackInfo& info) {
    return Change(info, "channel", [&](Names& n) {
      return shmbus_unsubscribe(sub_, n.pointers.data(), n.lengths.data(), n.bytes.size());
    });
  }
  Napi::Value Punsubscribe(const Napi::CallbackInfo& info) {
    return Change(info, "pattern", [&](Names& n) {
      return shmbus_punsubscribe(sub_, n.pointers.data(), n.lengths.data(), n.bytes.size());
    });
  }

  Napi::Value Count(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), sub_ ? static_cast<double>(shmbus_sub_count(sub_)) : 0.0);
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release();
    if (pinned_) Unref();
    pinned_ = false;
    return info.Env().Undefined();
  }

  // Readable: drain up to a batch, then one call into JavaScript with all of it:
  // onBatch(data, meta, names, reset). `data` is one Buffer holding the payloads back to
  // back; `meta` a Float64Array of kMetaPerMessage numbers per message (channel number,
  // pattern number or -1, payload offset and length in `data`, sequence, lost before);
  // `names` the [number, latin1 name] pairs first seen in this batch (a name crosses once,
  // not per message); `reset` says the numbering started over. So a message costs no
  // JavaScript object of its own until a listener asks for its payload.
  static void OnReadable(uv_poll_t* handle, int status, int /*events*/) {
    auto* self = static_cast<Watch*>(handle->data)->owner;
    if (self == nullptr || self->sub_ == nullptr) return;
    const Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    // A terminating worker's loop still runs (its last turns, then its cleanup's): no
    // JavaScript can run there, and taking messages would only lose them.
    if (!CanRunJs(env)) {
      uv_poll_stop(handle);
      return;
    }
    const Napi::Object wrapper = self->Value();
    if (status < 0) {
      Call(env, wrapper, "onError", {Napi::Error::New(env, uv_strerror(status)).Value()});
      return;
    }
    std::string& bytes = self->bytes_;
    std::vector<double>& meta = self->meta_;
    bytes.clear();
    if (bytes.capacity() == 0) bytes.reserve(64 << 10);  // given away with each batch
    meta.clear();
    Napi::Array fresh = Napi::Array::New(env);
    uint32_t fresh_at = 0;
    const bool reset = self->name_ids_.size() > kMaxNames;
    if (reset) self->name_ids_.clear();
    const auto number = [&](const char* name, size_t len) -> double {
      // Looked up by view: a known name (nearly every message's) costs no string.
      if (const auto known = self->name_ids_.find(std::string_view(name, len));
          known != self->name_ids_.end())
        return known->second;
      const auto [it, added] =
          self->name_ids_.try_emplace(std::string(name, len), self->name_ids_.size());
      if (added) {
        fresh.Set(fresh_at++, Napi::Number::New(env, it->second));
        fresh.Set(fresh_at++, Name(env, name, len));
      }
      return it->second;
    };
    int result = SHMBUS_OK;
    for (size_t n = 0; n < kBatchMessages && bytes.size() < kBatchBytes; ++n) {
      shmbus_message m;
      result = shmbus_next(self->sub_, 0, &m);
      if (result != SHMBUS_OK) break;
      meta.push_back(number(m.channel, m.channel_len));
      meta.push_back(m.pattern_len == 0 ? -1.0 : number(m.pattern, m.pattern_len));
      // Each payload starts 8-byte aligned in the batch, so a Float64Array (or any typed
      // array) can view it where it lies.
      bytes.resize((bytes.size() + 7) & ~size_t{7});
      meta.push_back(static_cast<double>(bytes.size()));
      meta.push_back(static_cast<double>(m.len));
      meta.push_back(static_cast<double>(m.sequence));
      meta.push_back(static_cast<double>(m.lost_before));
      bytes.append(static_cast<const char*>(m.data), m.len);
    }
    Napi::Value error = env.Null();
    if (result != SHMBUS_OK && result != SHMBUS_NO_MESSAGE) error = error_of(env, result).Value();
    if (!meta.empty()) {
      // Made with the C calls, checked: while the environment stops (a worker terminated
      // from another thread) they fail, and Napi wrappers would hand back empty values
      // whose use (ArrayBuffer::Data()) is a fatal error.
      napi_value numbers = nullptr;
      napi_value typed = nullptr;
      void* numbers_data = nullptr;
      const size_t numbers_bytes = meta.size() * sizeof(double);
      napi_value data = nullptr;
      if (napi_create_arraybuffer(env, numbers_bytes, &numbers_data, &numbers) != napi_ok ||
          napi_create_typedarray(env, napi_float64_array, meta.size(), numbers, 0, &typed) !=
              napi_ok ||
          (data = TakeBytes(env, bytes)) == nullptr) {
        // No JavaScript sees this batch: the names it numbered were never sent, so the
        // numbering starts over (the next batch sends each name it uses again).
        self->name_ids_.clear();
        bool pending = false;
        if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
          napi_value ignored;
          napi_get_and_clear_last_exception(env, &ignored);
        }
        return;
      }
      std::memcpy(numbers_data, meta.data(), numbers_bytes);
      // An exception thrown by a listener goes where Node sends any callback's: to
      // 'uncaughtException' (which ends the process unless handled).
      Call(env, wrapper, "onBatch", {data, typed, fresh, Napi::Boolean::New(env, reset)});
    }
    if (!error.IsNull() && self->sub_ != nullptr) Call(env, wrapper, "onError", {error});
  }
  // The batch's payloads as a Buffer without copying them: the bytes move to the heap and
  // the Buffer frees them when collected (a copy where a runtime refuses external
  // buffers, as Electron's does). `bytes` is left empty.
  // nullptr if neither can be made (the environment is stopping).
  static napi_value TakeBytes(napi_env env, std::string& bytes) {
    auto* owned = new std::string(std::move(bytes));
    bytes = std::string();
    napi_value out = nullptr;
    const napi_status status = napi_create_external_buffer(
        env, owned->size(), owned->data(),
        [](napi_env, void*, void* hint) { delete static_cast<std::string*>(hint); }, owned, &out);
    if (status == napi_ok) return out;
    // Any other failure may come after node::Buffer::New adopted the bytes (its finalizer
    // then frees them): deleting them here too would be a double free, so they are left.
    if (status != napi_no_external_buffers_allowed) return nullptr;
    void* copy_data = nullptr;
    if (napi_create_buffer_copy(env, owned->size(), owned->data(), &copy_data, &out) != napi_ok)
      out = nullptr;
    delete owned;
    return out;
  }
  // A name as a latin1 string: one character per byte, so any bytes round-trip and the
  // JavaScript side keys its listener maps by it without decoding.
  static Napi::Value Name(Napi::Env env, const char* data, size_t len) {
    napi_value out;
    napi_create_string_latin1(env, data, len, &out);
    return Napi::Value(env, out);
  }
  // Whether JavaScript can run: a call that checks it (napi_set_named_property, unlike
  // the creation of a value) fails while the environment is stopping.
  static bool CanRunJs(napi_env env) {
    napi_value object, value;
    if (napi_create_object(env, &object) != napi_ok || napi_get_undefined(env, &value) != napi_ok)
      return false;
    return napi_set_named_property(env, object, "probe", value) == napi_ok;
  }
  // wrapper[name](argument); what it throws goes to 'uncaughtException'. Nothing if the
  // environment stops meanwhile (Get then fails, and so does the call).
  static void Call(Napi::Env env, const Napi::Object& wrapper, const char* name,
                   const std::initializer_list<napi_value>& arguments) {
    const Napi::Value function = wrapper.Get(name);
    if (function.IsFunction()) function.As<Napi::Function>().MakeCallback(wrapper, arguments);
    RaisePending(env);
  }
  static void RaisePending(Napi::Env env) {
    if (!env.IsExceptionPending()) return;
    const Napi::Error error = env.GetAndClearPendingException();
    napi_fatal_exception(env, error.Value());
  }

  shmbus_sub* sub_ = nullptr;  // owned; used on the JavaScript thread only
  Watch* poll_ = nullptr;      // owned until uv_close's callback frees it
  bool pinned_ = false;        // Ref() held while something is subscribed
  // Names numbered for batches (see OnReadable), and the batch under construction; all
  // used on the JavaScript thread only.
  struct NameHash {
    using is_transparent = void;  // find() by string_view
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, uint32_t, NameHash, std::equal_to<>> name_ids_;
  std::string bytes_;
  std::vector<double> meta_;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData;
  data->channel_class = Napi::Persistent(Channel::Define(env));
  env.SetInstanceData(data);  // deleted with the environment
  exports.Set("Bus", Bus::Define(env));
  exports.Set("Subscriber", Subscriber::Define(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(shmbus, Init)
