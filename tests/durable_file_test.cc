// The bridge's state file is replaced durably (tools/bridge/durable_file.hpp): the new
// contents or the old, never neither, and no temporary file left behind. No redis-server.
#include "durable_file.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace shmbus::bridge {
namespace {

namespace fs = std::filesystem;

std::string read(const fs::path& path) {
  std::ifstream in(path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

class DurableFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("shmbus-durable-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(DurableFileTest, CreatesThenReplacesWithNothingLeftBehind) {
  const std::string path = (dir_ / "state").string();
  ASSERT_EQ(replace_file_durably(path, "first\n"), "");
  EXPECT_EQ(read(path), "first\n");
  const std::string big(1 << 20, 'x');  // more than one write() may take
  ASSERT_EQ(replace_file_durably(path, big), "");
  EXPECT_EQ(read(path), big);
  ASSERT_EQ(replace_file_durably(path, ""), "");
  EXPECT_EQ(read(path), "");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(DurableFileTest, AFailureLeavesTheOldFileAndSaysWhy) {
  const std::string path = (dir_ / "state").string();
  ASSERT_EQ(replace_file_durably(path, "old\n"), "");
  // The temporary file's name taken by a directory: the write cannot even start.
  fs::create_directory(path + ".tmp");
  const std::string error = replace_file_durably(path, "new\n");
  EXPECT_NE(error.find("cannot create " + path + ".tmp"), std::string::npos) << error;
  EXPECT_EQ(read(path), "old\n");
  fs::remove(path + ".tmp");
  // A directory that does not exist: nothing is created anywhere.
  const std::string nowhere = (dir_ / "missing" / "state").string();
  EXPECT_NE(replace_file_durably(nowhere, "x").find("cannot create"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir_ / "missing"));
}

TEST_F(DurableFileTest, ARenameOntoADirectoryFailsWithoutATemporaryLeft) {
  const std::string path = (dir_ / "taken").string();
  fs::create_directories(fs::path(path) / "inside");  // a non-empty directory: rename fails
  const std::string error = replace_file_durably(path, "x");
  EXPECT_NE(error.find("cannot rename"), std::string::npos) << error;
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_TRUE(fs::is_directory(path));
}

}  // namespace
}  // namespace shmbus::bridge
