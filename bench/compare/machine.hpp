// The machine the figures come from, printed and stored with them: results from another
// machine, or from this one under load, are not comparable.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace shmbus::compare {

struct Machine {
  std::string cpu_model;
  int cpus_online = 0;
  std::string kernel;
  std::string os;
  std::string virtualization;  // "KVM guest, in a docker container", "none"
  std::string memory;
  std::string cpuidle;         // the guest's idle driver decides how fast a sleeping CPU wakes
  std::string load_average;    // at the start of the run
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Machine, cpu_model, cpus_online, kernel, os, virtualization,
                                   memory, cpuidle, load_average)

Machine describe_machine();
std::string current_load_average();

}  // namespace shmbus::compare
