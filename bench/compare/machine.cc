#include "machine.hpp"

#include <sys/utsname.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace shmbus::compare {
namespace {

// The first line of `path` starting with `key`, from the first `separator` on (trimmed).
std::string field(const std::string& path, const std::string& key, char separator) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) != 0) continue;
    const auto at = line.find(separator);
    if (at == std::string::npos) continue;
    std::string value = line.substr(at + 1);
    value.erase(0, value.find_first_not_of(" \t\""));
    value.erase(value.find_last_not_of(" \t\"") + 1);
    return value;
  }
  return {};
}

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// systemd-detect-virt's answer, or empty when it is missing or says none.
std::string detect_virt(const char* which) {
  std::string command = std::string("systemd-detect-virt ") + which + " 2>/dev/null";
  std::string out;
  if (FILE* p = popen(command.c_str(), "r")) {
    char line[128] = {};
    if (std::fgets(line, sizeof line, p)) out = line;
    pclose(p);
  }
  out.erase(out.find_last_not_of(" \n") + 1);
  return out == "none" ? std::string() : out;
}

}  // namespace

std::string current_load_average() {
  std::istringstream in(first_line("/proc/loadavg"));
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return one + " " + five + " " + fifteen;
}

Machine describe_machine() {
  Machine m;
  m.cpu_model = field("/proc/cpuinfo", "model name", ':');
  m.cpus_online = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  utsname u{};
  uname(&u);
  m.kernel = std::string(u.sysname) + " " + u.release;
  m.os = field("/etc/os-release", "PRETTY_NAME", '=');
  const std::string vm = detect_virt("--vm"), container = detect_virt("--container");
  if (!vm.empty()) {
    m.virtualization = vm + " guest";
  } else if (field("/proc/cpuinfo", "flags", ':').find(" hypervisor") != std::string::npos) {
    m.virtualization = "virtual machine (hypervisor flag)";
  } else {
    m.virtualization = "none";
  }
  if (!container.empty()) m.virtualization += ", in a " + container + " container";
  const std::string total_kb = field("/proc/meminfo", "MemTotal", ':');
  m.memory = std::to_string(std::stoull(total_kb.empty() ? "0" : total_kb) / (1024 * 1024)) + " GiB";
  m.cpuidle = first_line("/sys/devices/system/cpu/cpuidle/current_driver");
  m.load_average = current_load_average();
  return m;
}

}  // namespace shmbus::compare
