#include "common/access.h"

#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_format.h"

namespace hwid {
namespace {

// getpwuid/getgrgid return static buffers: each name is copied before the next call.
std::string UserName(uid_t u) {
  const struct passwd* pw = getpwuid(u);
  return pw != nullptr ? std::string(pw->pw_name) : std::to_string(u);
}
std::string GroupName(gid_t g) {
  const struct group* gr = getgrgid(g);
  return gr != nullptr ? std::string(gr->gr_name) : std::to_string(g);
}

}  // namespace

std::string AccessProblem(const std::string& path, int mode, const std::string& what) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || access(path.c_str(), mode) == 0) {
    return "";
  }
  const uid_t uid = geteuid();
  return absl::StrFormat("uid %u (%s) may not %s %s (owner %s, group %s, mode %04o)", uid,
                         UserName(uid), what, path, UserName(st.st_uid), GroupName(st.st_gid),
                         st.st_mode & 07777);
}

std::string FileGroupName(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? GroupName(st.st_gid) : "";
}

}  // namespace hwid
