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
#include <chrono>
#include <optional>
#include <shmbus/shmbus.hpp>
#include <span>
#include <string>
#include <vector>

namespace py = pybind11;
using namespace std::chrono_literals;

namespace {

// A wait in slices this long, with a look for signals (Ctrl-C) between them. A message
// that arrives ends the wait at once: the slice bounds only how late a signal is seen.
constexpr auto kSignalSlice = 50ms;

// Bytes from str (UTF-8), bytes, bytearray or memoryview (any buffer).
std::string bytes_of(const py::handle& value, const char* what) {
  if (py::isinstance<py::str>(value)) return value.cast<std::string>();
  if (PyObject_CheckBuffer(value.ptr())) {
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(value).request();
    return {static_cast<const char*>(info.ptr), static_cast<size_t>(info.size * info.itemsize)};
  }
  throw py::type_error(std::string(what) + " must be str, bytes, bytearray or memoryview, not " +
                       std::string(py::str(py::type::of(value).attr("__name__"))));
}

// The bytes of str (its cached UTF-8), bytes, bytearray or any buffer, without a copy; the
// holder keeps them alive (and a buffer exported) for as long as it lives.
struct BytesView {
  std::string_view bytes;
  std::optional<py::buffer_info> holder;
};
BytesView view_of(const py::handle& value, const char* what) {
  if (PyBytes_Check(value.ptr()))
    return {{PyBytes_AS_STRING(value.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(value.ptr()))},
            std::nullopt};
  if (PyUnicode_Check(value.ptr())) {
    Py_ssize_t len = 0;
    const char* utf8 = PyUnicode_AsUTF8AndSize(value.ptr(), &len);
    if (utf8 == nullptr) throw py::error_already_set();
    return {{utf8, static_cast<size_t>(len)}, std::nullopt};
  }
  if (PyObject_CheckBuffer(value.ptr())) {
    BytesView v;
    v.holder = py::reinterpret_borrow<py::buffer>(value).request();
    v.bytes = {static_cast<const char*>(v.holder->ptr),
               static_cast<size_t>(v.holder->size * v.holder->itemsize)};
    return v;
  }
  return {bytes_of(value, what), std::nullopt};  // raises the TypeError
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
  if (!seconds) return std::chrono::nanoseconds(-1);
  return std::chrono::nanoseconds(static_cast<int64_t>(std::max(0.0, *seconds) * 1e9));
}

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
    return bus_.publish(name.bytes,
                        std::as_bytes(std::span(payload.bytes.data(), payload.bytes.size())));
  }
  std::vector<py::bytes> channels(const std::optional<py::handle>& pattern) {
    const std::string filter = pattern && !pattern->is_none() ? bytes_of(*pattern, "pattern") : "";
    std::vector<std::string> found;
    {
      py::gil_scoped_release unlocked;
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
      found = bus_.numsub(names);
    }
    std::vector<uint64_t> out;
    for (const auto& n : found) out.push_back(n.subscribers);
    return out;
  }
  uint64_t numpat() {
    py::gil_scoped_release unlocked;
    return bus_.numpat();
  }
  std::string bus_name() const { return bus_.bus_name(); }
  std::string socket_path() const { return bus_.socket_path(); }

 private:
  shmbus::Bus bus_;
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

class PySubscription {
 public:
  PySubscription(std::optional<std::string> bus, std::optional<std::string> socket,
                 std::optional<std::string> client_name)
      : sub_([&] {
          py::gil_scoped_release unlocked;
          return shmbus::Subscription::open(options_of(bus, socket, client_name));
        }()) {}

  void subscribe(const py::iterable& channels, const std::string& start, uint64_t after) {
    require_no_lease();
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
    py::gil_scoped_release unlocked;
    sub_.subscribe(names, from);
  }
  void psubscribe(const py::iterable& patterns) {
    require_no_lease();
    const std::vector<std::string> names = names_of(patterns, "pattern");
    py::gil_scoped_release unlocked;
    sub_.psubscribe(names);
  }
  void unsubscribe(const py::iterable& channels) {
    require_no_lease();
    const std::vector<std::string> names = names_of(channels, "channel");
    py::gil_scoped_release unlocked;
    sub_.unsubscribe(names);
  }
  void punsubscribe(const py::iterable& patterns) {
    require_no_lease();
    const std::vector<std::string> names = names_of(patterns, "pattern");
    py::gil_scoped_release unlocked;
    sub_.punsubscribe(names);
  }

  // The next message as (channel, pattern or None, data, sequence, lost_before,
  // publish_unix_ns, gap), or None once `timeout` seconds passed (None: wait forever).
  py::object next(const py::object& self, std::optional<double> timeout, bool view) {
    require_no_lease();
    const std::chrono::nanoseconds total = timeout_of(timeout);
    const bool forever = total.count() < 0;
    const auto deadline = std::chrono::steady_clock::now() + (forever ? 0ns : total);
    // A message already waiting is taken without letting the GIL go (a poll does not
    // wait): the release and re-acquire would cost more than the read.
    bool polled = false;
    for (;;) {
      std::optional<shmbus::Message> m;
      if (!polled) {
        polled = true;
        m = view ? sub_.next_view(0ns) : sub_.next(0ns);
      } else {
        py::gil_scoped_release unlocked;
        auto slice = std::chrono::nanoseconds(kSignalSlice);
        if (!forever)
          slice = std::min(
              slice,
              std::max(0ns, std::chrono::nanoseconds(deadline - std::chrono::steady_clock::now())));
        m = view ? sub_.next_view(slice) : sub_.next(slice);
      }
      if (!m && total.count() == 0) return py::none();
      if (m) {
        py::object data;
        if (view) {
          data = py::cast(Lease(m->payload.data(), m->payload.size(), self));
          lease_ = py::weakref(data);
        } else {
          data = to_bytes(m->text());
        }
        return py::make_tuple(
            to_bytes(m->channel),
            m->pattern.empty() ? py::object(py::none()) : py::object(to_bytes(m->pattern)), data,
            m->sequence, m->lost_before, m->publish_unix_ns, m->gap);
      }
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();  // Ctrl-C
      if (!forever && std::chrono::steady_clock::now() >= deadline) return py::none();
    }
  }

  // Whether the bytes of the last view were intact throughout (a lossy ring's publisher may
  // overwrite them while they are read).
  bool intact() { return sub_.intact(); }
  int fileno() { return sub_.fd(); }
  // How long next() spins before it sleeps (see Subscription::set_spin).
  void set_spin(double seconds) {
    sub_.set_spin(std::chrono::nanoseconds(static_cast<int64_t>(std::max(0.0, seconds) * 1e9)));
  }
  size_t count() const { return sub_.count(); }
  std::vector<py::bytes> channels() const {
    std::vector<py::bytes> out;
    for (const auto& c : sub_.channels()) out.push_back(to_bytes(c));
    return out;
  }
  std::vector<py::bytes> patterns() const {
    std::vector<py::bytes> out;
    for (const auto& p : sub_.patterns()) out.push_back(to_bytes(p));
    return out;
  }

 private:
  void require_no_lease() {
    if (lease_ && !lease_().is_none())
      throw py::buffer_error(
          "a zero-copy message is still held: release its memoryview (message.release(), "
          "memoryview.release() or del) before the next message or a subscription change");
    lease_ = py::weakref();
  }

  shmbus::Subscription sub_;
  py::weakref lease_;  // the last view's Lease, while something holds it
};

}  // namespace

PYBIND11_MODULE(_shmbus, m) {
  m.doc() = "Native layer of the shmbus package (use the shmbus module instead).";

  // The exception hierarchy, one class per shmbus::Errc, all under ShmbusError.
  static py::exception<shmbus::Error> base(m, "ShmbusError");
  struct Kind {
    shmbus::Errc code;
    const char* name;
  };
  static const Kind kinds[] = {
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
  static std::vector<py::object> classes;
  for (const Kind& k : kinds) {
    py::object cls = py::reinterpret_steal<py::object>(
        PyErr_NewException((std::string("shmbus.") + k.name).c_str(), base.ptr(), nullptr));
    m.attr(k.name) = cls;
    classes.push_back(cls);
  }
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const shmbus::Error& e) {
      for (size_t i = 0; i < std::size(kinds); ++i)
        if (kinds[i].code == e.code()) {
          PyErr_SetString(classes[i].ptr(), e.what());
          return;
        }
      PyErr_SetString(base.ptr(), e.what());
    }
  });

  py::class_<PyBus>(m, "Bus")
      .def(py::init<std::optional<std::string>, std::optional<std::string>,
                    std::optional<std::string>>(),
           py::arg("bus") = py::none(), py::arg("socket") = py::none(),
           py::arg("client_name") = py::none())
      .def("publish", &PyBus::publish, py::arg("channel"), py::arg("data"))
      .def("channels", &PyBus::channels, py::arg("pattern") = py::none())
      .def("numsub", &PyBus::numsub, py::arg("channels"))
      .def("numpat", &PyBus::numpat)
      .def_property_readonly("bus_name", &PyBus::bus_name)
      .def_property_readonly("socket_path", &PyBus::socket_path);

  py::class_<Lease>(m, "Lease", py::buffer_protocol()).def_buffer(&Lease::buffer);

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
      .def(
          "next",
          [](const py::object& self, std::optional<double> timeout, bool view) {
            return self.cast<PySubscription&>().next(self, timeout, view);
          },
          py::arg("timeout") = py::none(), py::arg("view") = false)
      .def("intact", &PySubscription::intact)
      .def("fileno", &PySubscription::fileno)
      .def("set_spin", &PySubscription::set_spin, py::arg("seconds"))
      .def("count", &PySubscription::count)
      .def("channels", &PySubscription::channels)
      .def("patterns", &PySubscription::patterns);
}
