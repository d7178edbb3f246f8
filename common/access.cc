#include "common/access.h"

#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

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
  const uid_t uid = geteuid();
  if (stat(path.c_str(), &st) != 0) {
    if (errno != EACCES) {
      return "";  // missing: the caller says so separately
    }
    // A directory on the way may not be searched: name the nearest one this uid cannot enter.
    std::string dir = path;
    while (true) {
      const size_t slash = dir.find_last_of('/');
      if (slash == std::string::npos || slash == 0) {
        return absl::StrFormat("uid %u (%s) may not reach %s (a directory on the path is not "
                               "searchable)", uid, UserName(uid), path);
      }
      dir.resize(slash);
      struct stat dst;
      if (stat(dir.c_str(), &dst) == 0) {
        return absl::StrFormat(
            "uid %u (%s) may not %s %s: it may not search the directory %s (owner %s, group "
            "%s, mode %04o)",
            uid, UserName(uid), what, path, dir, UserName(dst.st_uid), GroupName(dst.st_gid),
            dst.st_mode & 07777);
      }
    }
  }
  if (access(path.c_str(), mode) == 0) {
    return "";
  }
  return absl::StrFormat("uid %u (%s) may not %s %s (owner %s, group %s, mode %04o)", uid,
                         UserName(uid), what, path, UserName(st.st_uid), GroupName(st.st_gid),
                         st.st_mode & 07777);
}

std::string FileGroupName(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? GroupName(st.st_gid) : "";
}

}  // namespace hwid
