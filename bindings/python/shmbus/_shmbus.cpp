// shmbus._shmbus: the native layer of the Python package, over libshmbus's C++ API. The
// redis-py-shaped surface (Bus.pubsub(), message dicts, handlers, listen(), asyncio) is in
// the package's Python files; this file only moves bytes and errors across:
//   - every wait releases the GIL and is cut into slices that check for signals, so Ctrl-C
//     interrupts a blocking get_message() or listen();
//   - shmbus::Error becomes shmbus.ShmbusError or the subclass for its code, with the
//     library's text (which names the limit and the way out).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <shmbus/shmbus.hpp>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;
using namespace std::chrono_literals;

namespace {

// A wait in slices this long, with a look for signals (Ctrl-C) between them. A message
// that arrives ends the wait at once: the slice bounds only how late a signal is seen.
constexpr auto kSignalSlice = 50ms;

// The bytes of a buffer, contiguous: PyBUF_SIMPLE refuses a strided one (a memoryview
// slice with a step), which is then copied through bytes(), as that follows the strides.
// Holds the buffer until destroyed, which needs the GIL.
class Contiguous {
 public:
  explicit Contiguous(const py::handle& value) {
    if (PyObject_GetBuffer(value.ptr(), &view_, PyBUF_SIMPLE) == 0) {
      held_ = true;
      bytes_ = {static_cast<const char*>(view_.buf), static_cast<size_t>(view_.len)};
      return;
    }
    PyErr_Clear();
    copy_ = py::reinterpret_steal<py::object>(PyBytes_FromObject(value.ptr()));
    if (!copy_) throw py::error_already_set();
    bytes_ = {PyBytes_AS_STRING(copy_.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(copy_.ptr()))};
  }
  Contiguous(const Contiguous&) = delete;
  Contiguous& operator=(const Contiguous&) = delete;
  ~Contiguous() {
    if (held_) PyBuffer_Release(&view_);
  }
  std::string_view bytes() const { return bytes_; }

 private:
  Py_buffer view_{};
  bool held_ = false;
  py::object copy_;
  std::string_view bytes_;
};

// The bytes of a name or payload without a copy where possible: str (its cached UTF-8),
// bytes, any buffer; int and float as their text, as redis-py's encoder does. `holder`
// keeps them valid for as long as it lives.
struct BytesView {
  std::string_view view;  // unless owns_text
  std::unique_ptr<Contiguous> holder;
  std::string text;  // an int's or float's digits (a move must not leave `view` behind)
  bool owns_text = false;
  std::string_view bytes() const { return owns_text ? std::string_view(text) : view; }
};
BytesView view_of(const py::handle& value, const char* what) {
  PyObject* o = value.ptr();
  if (PyBytes_Check(o))
    return {{PyBytes_AS_STRING(o), static_cast<size_t>(PyBytes_GET_SIZE(o))}, nullptr, {}, false};
  if (PyUnicode_Check(o)) {
    Py_ssize_t len = 0;
    const char* utf8 = PyUnicode_AsUTF8AndSize(o, &len);
    if (utf8 == nullptr) throw py::error_already_set();
    return {{utf8, static_cast<size_t>(len)}, nullptr, {}, false};
  }
  if (PyObject_CheckBuffer(o)) {
    BytesView v;
    v.holder = std::make_unique<Contiguous>(value);
    v.view = v.holder->bytes();  // in the heap-held Contiguous: survives the move
    return v;
  }
  if ((PyLong_Check(o) || PyFloat_Check(o)) && !PyBool_Check(o)) {
    BytesView v;
    v.text = py::str(value).cast<std::string>();
    v.owns_text = true;
    return v;
  }
  throw py::type_error(std::string(what) +
                       " must be str, bytes, bytearray, memoryview, int or float, not " +
                       std::string(py::str(py::type::of(value).attr("__name__"))));
}

std::string bytes_of(const py::handle& value, const char* what) {
  return std::string(view_of(value, what).bytes());
}

std::vector<std::string> names_of(const py::iterable& names, const char* what) {
  std::vector<std::string> out;
  for (const py::handle& name : names) out.push_back(bytes_of(name, what));
  return out;
}

py::bytes to_bytes(std::string_view s) {
  return {s.data(), s.size()};
}

shmbus::ConnectOptions options_of(std::optional<std::string> bus, std::optional<std::string> socket,
                                  std::optional<std::string> client_name) {
  shmbus::ConnectOptions options;
  if (bus) options.bus = *bus;
  if (socket) options.socket_path = *socket;
  options.client_name = client_name ? *client_name : "python";
  return options;
}

// seconds (None: forever) -> the C++ API's timeout (negative: forever).
std::chrono::nanoseconds timeout_of(std::optional<double> seconds) {
  // None, or more than ~31 years (which the clock arithmetic would overflow): no limit.
  if (!seconds || *seconds > 1e9) return std::chrono::nanoseconds(-1);
  return std::chrono::nanoseconds(static_cast<int64_t>(std::max(0.0, *seconds) * 1e9));
}

// shmbus.ShmbusError and its subclasses, one per shmbus::Errc; set up by the module's init.
struct ErrorClass {
  shmbus::Errc code;
  const char* name;
};
constexpr ErrorClass kErrorClasses[] = {
    {shmbus::Errc::kNoDaemon, "DaemonUnavailable"},
    {shmbus::Errc::kDaemonGone, "DaemonGone"},
    {shmbus::Errc::kProtocol, "ProtocolError"},
    {shmbus::Errc::kInvalidArgument, "InvalidArgument"},
    {shmbus::Errc::kTooLarge, "MessageTooLarge"},
    {shmbus::Errc::kLimit, "LimitExceeded"},
    {shmbus::Errc::kWouldBlock, "WouldBlock"},
    {shmbus::Errc::kTimedOut, "PublishTimeout"},
    {shmbus::Errc::kSystem, "SystemCallError"},
    {shmbus::Errc::kCorrupt, "CorruptChannel"},
    {shmbus::Errc::kPermission, "PermissionDenied"},
};
PyObject* g_error_base = nullptr;                          // owned by the module
PyObject* g_error_classes[std::size(kErrorClasses)] = {};  // owned by the module

// Sets the Python exception for `e`: the subclass for its code, with the library's text.
void set_python_error(const shmbus::Error& e) {
  for (size_t i = 0; i < std::size(kErrorClasses); ++i)
    if (kErrorClasses[i].code == e.code()) {
      PyErr_SetString(g_error_classes[i], e.what());
      return;
    }
  PyErr_SetString(g_error_base, e.what());
}

// Runs `body` for a method called straight from CPython (no pybind11 dispatcher): a C++
// exception becomes the Python exception pybind11 would have raised, and nullptr.
template <typename Body>
PyObject* guarded(Body&& body) noexcept {
  try {
    return body();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const py::builtin_exception& e) {
    e.set_error();
  } catch (const shmbus::Error& e) {
    set_python_error(e);
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::invalid_argument& e) {  // as pybind11 translates the standard ones
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::domain_error& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::length_error& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::out_of_range& e) {
    PyErr_SetString(PyExc_IndexError, e.what());
  } catch (const std::overflow_error& e) {
    PyErr_SetString(PyExc_OverflowError, e.what());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

// The arguments of a METH_FASTCALL | METH_KEYWORDS call, by position or by keyword, into
// `out` (nullptr where not given). False, with TypeError set, on a missing required, an
// unknown or a doubled argument.
bool parse_arguments(const char* function, PyObject* const* args, Py_ssize_t nargs,
                     PyObject* kwnames, std::initializer_list<const char*> names, size_t required,
                     PyObject** out) {
  const size_t count = names.size();
  if (static_cast<size_t>(nargs) > count) {
    PyErr_Format(PyExc_TypeError, "%s() takes at most %zu arguments (%zd given)", function, count,
                 nargs);
    return false;
  }
  for (size_t i = 0; i < count; ++i) out[i] = i < static_cast<size_t>(nargs) ? args[i] : nullptr;
  const Py_ssize_t keywords = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t k = 0; k < keywords; ++k) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, k);
    size_t i = 0;
    for (const char* name : names) {
      if (PyUnicode_CompareWithASCIIString(key, name) == 0) break;
      ++i;
    }
    if (i == count) {
      PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", function, key);
      return false;
    }
    if (out[i] != nullptr) {
      PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument %R", function, key);
      return false;
    }
    out[i] = args[nargs + k];
  }
  for (size_t i = 0; i < required; ++i)
    if (out[i] == nullptr) {
      PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", function,
                   names.begin()[i]);
      return false;
    }
  return true;
}

// The keys and constant values of a message dict, interned once: the per-message path
// builds each dict from these without a lookup or an allocation for them.
struct MessageKeys {
  PyObject* type;
  PyObject* pattern;
  PyObject* channel;
  PyObject* data;
  PyObject* sequence;
  PyObject* lost;
  PyObject* publish_unix_ns;
  PyObject* gap;
  PyObject* message;   // the value "message"
  PyObject* pmessage;  // the value "pmessage"
};
MessageKeys g_keys;  // immortal for the process's life (interned, never released)

class PyBus {
 public:
  PyBus(std::optional<std::string> bus, std::optional<std::string> socket,
        std::optional<std::string> client_name)
      : bus_([&] {
          py::gil_scoped_release unlocked;
          return shmbus::Bus::connect(options_of(bus, socket, client_name));
        }()) {}

  uint32_t publish(const py::handle& channel, const py::handle& data) {
    const BytesView name = view_of(channel, "channel");
    const BytesView payload = view_of(data, "data");
    // A back-pressure channel may make it wait: not with the GIL held. (The views stay
    // valid: `channel` and `data` are referenced by the caller for the whole call.)
    py::gil_scoped_release unlocked;
    std::lock_guard<std::mutex> lock(mu_);
    return bus_.publish(name.bytes(),
                        std::as_bytes(std::span(payload.bytes().data(), payload.bytes().size())));
  }
  // Bus.publish() from CPython straight (METH_FASTCALL), as Subscription.next_fast.
  static PyObject* publish_fast(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                                PyObject* kwnames) {
    return guarded([&]() -> PyObject* {
      PyObject* given[2];
      if (!parse_arguments("publish", args, nargs, kwnames, {"channel", "data"}, 2, given))
        return nullptr;
      const uint32_t receivers =
          py::handle(self).cast<PyBus&>().publish(py::handle(given[0]), py::handle(given[1]));
      return PyLong_FromUnsignedLong(receivers);
    });
  }
  std::vector<py::bytes> channels(const std::optional<py::handle>& pattern) {
    const std::string filter = pattern && !pattern->is_none() ? bytes_of(*pattern, "pattern") : "";
    std::vector<std::string> found;
    {
      py::gil_scoped_release unlocked;
      std::lock_guard<std::mutex> lock(mu_);
      found = bus_.channels(filter);
    }
    std::vector<py::bytes> out;
    for (const auto& c : found) out.push_back(to_bytes(c));
    return out;
  }
  std::vector<uint64_t> numsub(const py::iterable& channels) {
    const std::vector<std::string> names = names_of(channels, "channel");
    std::vector<shmbus::NumSub> found;
    {
      py::gil_scoped_release unlocked;
      std::lock_guard<std::mutex> lock(mu_);
      found = bus_.numsub(names);
    }
    std::vector<uint64_t> out;
    for (const auto& n : found) out.push_back(n.subscribers);
    return out;
  }
  uint64_t numpat() {
    py::gil_scoped_release unlocked;
    std::lock_guard<std::mutex> lock(mu_);
    return bus_.numpat();
  }
  std::string bus_name() const { return bus_.bus_name(); }
  std::string socket_path() const { return bus_.socket_path(); }

 private:
  // A Bus is used by one thread at a time (its channel cache is unguarded); Python threads
  // share this object, and each call lets the GIL go: the mutex takes its place.
  std::mutex mu_;
  shmbus::Bus bus_;  // guarded by mu_
};

// A message read in place (next_view): the buffer a memoryview reads. Python's reference
// counting says when it is let go: every memoryview over it holds a reference, so while a
// Lease object lives, its bytes may still be read, and the subscription refuses to move on
// (the ring could be overwritten under it, or unmapped by a subscription change).
class Lease {
 public:
  // `owner`: the Subscription's Python object, kept alive (and its rings mapped) as long as
  // the lease is.
  Lease(const std::byte* data, size_t len, py::object owner)
      : data_(data), len_(len), owner_(std::move(owner)) {}
  py::buffer_info buffer() const {
    return py::buffer_info(const_cast<std::byte*>(data_), 1,
                           py::format_descriptor<uint8_t>::format(), 1,
                           {static_cast<py::ssize_t>(len_)}, {1}, /*readonly=*/true);
  }

 private:
  const std::byte* data_;
  size_t len_;
  py::object owner_;
};

// One Subscription shared by Python threads (a run_in_thread worker and the thread that
// subscribes, say). The C++ object is used by one thread at a time: every call takes `mu_`
// after letting the GIL go, and a waiting next() holds it only for one slice at a time, so
// a subscription change from another thread gets in between slices - and ends the wait
// (`changed_`), so listen() yields its confirmation at once, as redis-py's does.
class PySubscription {
 public:
  PySubscription(std::optional<std::string> bus, std::optional<std::string> socket,
                 std::optional<std::string> client_name)
      : sub_([&] {
          py::gil_scoped_release unlocked;
          return shmbus::Subscription::open(options_of(bus, socket, client_name));
        }()) {}

  void subscribe(const py::iterable& channels, const std::string& start, uint64_t after) {
    shmbus::StartAt from;
    if (start == "latest")
      from = shmbus::StartAt::latest();
    else if (start == "earliest")
      from = shmbus::StartAt::earliest();
    else if (start == "after")
      from = shmbus::StartAt::after(after);
    else
      throw py::value_error("start must be 'latest', 'earliest' or 'after', not '" + start + "'");
    const std::vector<std::string> names = names_of(channels, "channel");
    change([&] { sub_.subscribe(names, from); });
  }
  void psubscribe(const py::iterable& patterns) {
    const std::vector<std::string> names = names_of(patterns, "pattern");
    change([&] { sub_.psubscribe(names); });
  }
  void unsubscribe(const py::iterable& channels) {
    const std::vector<std::string> names = names_of(channels, "channel");
    change([&] { sub_.unsubscribe(names); });
  }
  void punsubscribe(const py::iterable& patterns) {
    const std::vector<std::string> names = names_of(patterns, "pattern");
    change([&] { sub_.punsubscribe(names); });
  }

  // The next message as redis-py's dict (plus sequence, lost, publish_unix_ns and gap) or,
  // with `view`, as (channel, pattern or None, Lease, sequence, lost_before,
  // publish_unix_ns, gap); None once `timeout` seconds passed (None: wait forever) or
  // another thread changed the subscription meanwhile.
  py::object next(const py::object& self, std::optional<double> timeout, bool view) {
    const std::chrono::nanoseconds total = timeout_of(timeout);
    const bool forever = total.count() < 0;
    const auto deadline = std::chrono::steady_clock::now() + (forever ? 0ns : total);
    changed_ = false;  // only a change made while this call waits ends it
    for (bool first = true;; first = false) {
      // Each slice: a view another thread took meanwhile must not be let go under it.
      require_no_lease();
      if (reading_thread_ == std::this_thread::get_id())
        throw std::logic_error(
            "next() re-entered (from a finalizer?) while this thread turns a message into "
            "Python objects: that message would be invalidated under it");
      // A Message points into the subscription (names, payload), valid until its next read
      // or change: `mu_` stays held until the Python objects are built from it, or another
      // thread's unsubscribe could free the bytes under the copy. Lock order: mu_, then the
      // GIL; no thread waits for mu_ while holding the GIL (try_lock only), so re-taking the
      // GIL with mu_ held cannot deadlock.
      std::optional<shmbus::Message> m;
      std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
      if (first && lock.try_lock()) {
        // A message already waiting is taken without letting the GIL go (a poll does not
        // wait): the release and re-acquire would cost more than the read.
        m = view ? sub_.next_view(0ns) : sub_.next(0ns);
      } else if (!first || total.count() != 0) {
        py::gil_scoped_release unlocked;
        lock.lock();
        auto slice = std::chrono::nanoseconds(kSignalSlice);
        if (!forever)
          slice = std::min(
              slice,
              std::max(0ns, std::chrono::nanoseconds(deadline - std::chrono::steady_clock::now())));
        m = view ? sub_.next_view(slice) : sub_.next(slice);
        if (!m) lock.unlock();  // before the GIL is taken back: nothing to build
      }
      if (m) {
        reading_thread_ = std::this_thread::get_id();
        struct Done {
          std::thread::id& id;
          ~Done() { id = std::thread::id(); }
        } done{reading_thread_};
        if (!view) return message_dict(*m);
        py::object lease = py::cast(Lease(m->payload.data(), m->payload.size(), self));
        lease_ = py::weakref(lease);
        return py::make_tuple(
            to_bytes(m->channel),
            m->pattern.empty() ? py::object(py::none()) : py::object(to_bytes(m->pattern)), lease,
            m->sequence, m->lost_before, m->publish_unix_ns, m->gap);
      }
      if (lock.owns_lock()) lock.unlock();
      if (total.count() == 0 && !first) return py::none();
      if (changed_.exchange(false)) return py::none();  // the caller looks at what changed
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();  // Ctrl-C
      if (!first && !forever && std::chrono::steady_clock::now() >= deadline) return py::none();
    }
  }

  // Names and payloads of message dicts as str (UTF-8) instead of bytes: decode_responses.
  void set_decode(bool decode) { decode_ = decode; }

  // Subscription.next() from CPython straight (METH_FASTCALL): the per-message path skips
  // pybind11's dispatcher, which costs more than the read itself.
  static PyObject* next_fast(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                             PyObject* kwnames) {
    return guarded([&]() -> PyObject* {
      PyObject* given[2];
      if (!parse_arguments("next", args, nargs, kwnames, {"timeout", "view"}, 0, given))
        return nullptr;
      std::optional<double> timeout;
      if (given[0] != nullptr && given[0] != Py_None) {
        timeout = PyFloat_AsDouble(given[0]);
        if (*timeout == -1.0 && PyErr_Occurred()) {
          PyErr_Format(PyExc_TypeError, "timeout must be seconds (a number) or None, not %s",
                       Py_TYPE(given[0])->tp_name);
          return nullptr;
        }
      }
      if (given[1] != nullptr && !PyBool_Check(given[1])) {
        PyErr_Format(PyExc_TypeError, "view must be True or False, not %s",
                     Py_TYPE(given[1])->tp_name);
        return nullptr;
      }
      const int view = given[1] == Py_True;
      const py::object owner = py::reinterpret_borrow<py::object>(self);
      return owner.cast<PySubscription&>().next(owner, timeout, view != 0).release().ptr();
    });
  }

  // Whether the bytes of the last view were intact throughout (a lossy ring's publisher may
  // overwrite them while they are read).
  bool intact() {
    py::gil_scoped_release unlocked;
    std::lock_guard<std::mutex> lock(mu_);
    return sub_.intact();
  }
  int fileno() {
    py::gil_scoped_release unlocked;
    std::lock_guard<std::mutex> lock(mu_);
    return sub_.fd();
  }
  // How long next() spins before it sleeps (see Subscription::set_spin).
  void set_spin(double seconds) {
    py::gil_scoped_release unlocked;
    std::lock_guard<std::mutex> lock(mu_);
    sub_.set_spin(std::chrono::nanoseconds(static_cast<int64_t>(std::max(0.0, seconds) * 1e9)));
  }
  size_t count() {
    py::gil_scoped_release unlocked;
    std::lock_guard<std::mutex> lock(mu_);
    return sub_.count();
  }

 private:
  template <typename Change>
  void change(Change&& apply) {
    require_no_lease();
    {
      py::gil_scoped_release unlocked;
      std::lock_guard<std::mutex> lock(mu_);
      apply();
    }
    changed_ = true;
  }
  // A name or a payload as the dict carries it: bytes, or str when decoding.
  py::object text_object(std::string_view bytes) const {
    if (!decode_) return to_bytes(bytes);
    PyObject* text =
        PyUnicode_DecodeUTF8(bytes.data(), static_cast<Py_ssize_t>(bytes.size()), "strict");
    if (text == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(text);
  }
  // REQUIRES: the GIL. The dict get_message() returns, keys interned at module init.
  py::object message_dict(const shmbus::Message& m) const {
    const py::object channel = text_object(m.channel);
    const py::object pattern = m.pattern.empty() ? py::none() : text_object(m.pattern);
    const py::object data = text_object(m.text());
    py::dict out;
    const std::pair<PyObject*, py::object> items[] = {
        {g_keys.type,
         py::reinterpret_borrow<py::object>(m.pattern.empty() ? g_keys.message : g_keys.pmessage)},
        {g_keys.pattern, pattern},
        {g_keys.channel, channel},
        {g_keys.data, data},
        {g_keys.sequence, py::int_(m.sequence)},
        {g_keys.lost, py::int_(m.lost_before)},
        {g_keys.publish_unix_ns, py::int_(m.publish_unix_ns)},
        {g_keys.gap, py::bool_(m.gap)},
    };
    for (const auto& [key, value] : items)
      if (PyDict_SetItem(out.ptr(), key, value.ptr()) != 0) throw py::error_already_set();
    return out;
  }

  // REQUIRES: the GIL (it looks at a Python object).
  void require_no_lease() {
    if (lease_ && !lease_().is_none())
      throw py::buffer_error(
          "a zero-copy message is still held: release its memoryview (message.release(), "
          "memoryview.release() or del) before the next message or a subscription change");
    lease_ = py::weakref();
  }

  std::mutex mu_;
  shmbus::Subscription sub_;          // guarded by mu_
  py::weakref lease_;                 // the last view's Lease while held; guarded by the GIL
  std::atomic<bool> changed_{false};  // a change since the last next() began waiting
  bool decode_ = false;               // set once, before any message; guarded by the GIL
  std::thread::id reading_thread_;    // building a message's objects (holding mu_); GIL
};

}  // namespace

PYBIND11_MODULE(_shmbus, m) {
  m.doc() = "Native layer of the shmbus package (use the shmbus module instead).";

  // The exception hierarchy, one class per shmbus::Errc, all under ShmbusError.
  static py::exception<shmbus::Error> base(m, "ShmbusError");
  g_error_base = base.ptr();
  for (size_t i = 0; i < std::size(kErrorClasses); ++i) {
    PyObject* cls = PyErr_NewException((std::string("shmbus.") + kErrorClasses[i].name).c_str(),
                                       base.ptr(), nullptr);
    if (cls == nullptr) throw py::error_already_set();
    g_error_classes[i] = cls;  // the module's attribute below holds a reference too
    m.attr(kErrorClasses[i].name) = py::reinterpret_borrow<py::object>(cls);
  }
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const shmbus::Error& e) {
      set_python_error(e);
    }
  });
  for (auto [slot, text] : {std::pair{&g_keys.type, "type"},
                            {&g_keys.pattern, "pattern"},
                            {&g_keys.channel, "channel"},
                            {&g_keys.data, "data"},
                            {&g_keys.sequence, "sequence"},
                            {&g_keys.lost, "lost"},
                            {&g_keys.publish_unix_ns, "publish_unix_ns"},
                            {&g_keys.gap, "gap"},
                            {&g_keys.message, "message"},
                            {&g_keys.pmessage, "pmessage"}}) {
    *slot = PyUnicode_InternFromString(text);
    if (*slot == nullptr) throw py::error_already_set();
  }

  auto bus_class = py::class_<PyBus>(m, "Bus")
                       .def(py::init<std::optional<std::string>, std::optional<std::string>,
                                     std::optional<std::string>>(),
                            py::arg("bus") = py::none(), py::arg("socket") = py::none(),
                            py::arg("client_name") = py::none())
                       .def("channels", &PyBus::channels, py::arg("pattern") = py::none())
                       .def("numsub", &PyBus::numsub, py::arg("channels"))
                       .def("numpat", &PyBus::numpat)
                       .def_property_readonly("bus_name", &PyBus::bus_name)
                       .def_property_readonly("socket_path", &PyBus::socket_path);

  py::class_<Lease>(m, "Lease", py::buffer_protocol()).def_buffer(&Lease::buffer);

  auto subscription_class =
      py::class_<PySubscription>(m, "Subscription")
          .def(py::init<std::optional<std::string>, std::optional<std::string>,
                        std::optional<std::string>>(),
               py::arg("bus") = py::none(), py::arg("socket") = py::none(),
               py::arg("client_name") = py::none())
          .def("subscribe", &PySubscription::subscribe, py::arg("channels"),
               py::arg("start") = "latest", py::arg("after") = 0)
          .def("psubscribe", &PySubscription::psubscribe, py::arg("patterns"))
          .def("unsubscribe", &PySubscription::unsubscribe, py::arg("channels"))
          .def("punsubscribe", &PySubscription::punsubscribe, py::arg("patterns"))
          .def("set_decode", &PySubscription::set_decode, py::arg("decode"))
          .def("intact", &PySubscription::intact)
          .def("fileno", &PySubscription::fileno)
          .def("set_spin", &PySubscription::set_spin, py::arg("seconds"))
          .def("count", &PySubscription::count);

  // The per-message methods, as method descriptors of CPython's own (see publish_fast).
  static PyMethodDef publish_def = {
      "publish", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&PyBus::publish_fast)),
      METH_FASTCALL | METH_KEYWORDS,
      "publish($self, /, channel, data)\n--\n\nPUBLISH a copy of data; returns the receivers."};
  static PyMethodDef next_def = {
      "next",
      reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&PySubscription::next_fast)),
      METH_FASTCALL | METH_KEYWORDS,
      "next($self, /, timeout=None, view=False)\n--\n\nThe next message (a dict; with view, "
      "a tuple holding a Lease), or None."};
  for (auto [cls, def] :
       {std::pair{bus_class.ptr(), &publish_def}, std::pair{subscription_class.ptr(), &next_def}}) {
    PyObject* method = PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls), def);
    if (method == nullptr || PyObject_SetAttrString(cls, def->ml_name, method) != 0)
      throw py::error_already_set();
    Py_DECREF(method);
  }
}
