// libshmbus: Redis-style publish/subscribe between processes of one host, through shared
// memory. Include this header, link with `pkg-config --libs shmbus`.
#pragma once

#include "shmbus/bus.hpp"
#include "shmbus/error.hpp"
#include "shmbus/stats.hpp"
#include "shmbus/subscription.hpp"
