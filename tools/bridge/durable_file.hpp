// Replacing a small file so that a crash at any moment leaves either the old contents or
// the new, never neither and never half: the bridge's state file (durable stream positions
// and imported sequences).
#pragma once

#include <string>
#include <string_view>

namespace shmbus::bridge {

// Writes `contents` to `path` + ".tmp", fsyncs it, renames it over `path`, then fsyncs the
// directory so the rename itself survives a power loss. Returns "" on success, else what
// failed (naming the file and the system's reason): until the rename, `path` is untouched
// and the temporary file removed; a failed fsync of the directory comes after the rename,
// so `path` then holds the new contents, not yet known to be on disk. The file is created
// owner-only (0600): it holds read positions nobody else needs.
std::string replace_file_durably(const std::string& path, std::string_view contents);

}  // namespace shmbus::bridge
