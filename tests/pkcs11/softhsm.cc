#include "tests/pkcs11/softhsm.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"

namespace hwid::testing {

bool SoftHsmAvailable() {
  return access(SoftHsm::kModule, R_OK) == 0 && access(SoftHsm::kUtil, X_OK) == 0;
}

absl::StatusOr<std::unique_ptr<SoftHsm>> SoftHsm::Start(const std::string& label,
                                                        const std::string& pin,
                                                        const std::string& so_pin) {
  if (!SoftHsmAvailable()) {
    return absl::FailedPreconditionError(
        absl::StrCat("SoftHSM2 is not installed (", kModule, ", ", kUtil,
                     "): apt-get install softhsm2"));
  }
  const char* tmp = getenv("TMPDIR");
  std::string templ = absl::StrCat(tmp != nullptr && *tmp != 0 ? tmp : "/tmp", "/hwid-softhsm-XXXXXX");
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back(0);
  if (mkdtemp(buf.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", templ, " failed"));
  }
  std::string dir(buf.data());
  std::unique_ptr<SoftHsm> hsm(new SoftHsm(dir, label, pin));
  std::filesystem::create_directory(dir + "/tokens");
  {
    std::ofstream conf(dir + "/softhsm2.conf");
    conf << "directories.tokendir = " << dir << "/tokens\n"
         << "objectstore.backend = file\n"
         << "log.level = ERROR\n"
         << "slots.removable = false\n";
  }
  setenv("SOFTHSM2_CONF", (dir + "/softhsm2.conf").c_str(), 1);
  const pid_t pid = fork();
  if (pid == 0) {
    const int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    execl(kUtil, kUtil, "--init-token", "--free", "--label", label.c_str(), "--pin", pin.c_str(),
          "--so-pin", so_pin.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("softhsm2-util --init-token in ", dir, " failed"));
  }
  return hsm;
}

SoftHsm::~SoftHsm() {
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string SoftHsm::uri_no_pin() const {
  return absl::StrCat("pkcs11:token=", label_, "?module-path=", kModule);
}

std::string SoftHsm::uri() const { return absl::StrCat(uri_no_pin(), "&pin-value=", pin_); }

}  // namespace hwid::testing
