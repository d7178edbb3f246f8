#include "tests/pkcs11/softhsm.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <p11-kit/pkcs11.h>
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

absl::Status SoftHsm::LogOutThisProcess() const {
  void* dl = dlopen(kModule, RTLD_NOW | RTLD_NOLOAD);
  auto get = dl != nullptr
                 ? reinterpret_cast<CK_C_GetFunctionList>(dlsym(dl, "C_GetFunctionList"))
                 : nullptr;
  CK_FUNCTION_LIST* fl = nullptr;
  if (get == nullptr || get(&fl) != CKR_OK) {
    return absl::FailedPreconditionError("SoftHSM2 is not loaded in this process");
  }
  CK_SLOT_ID slots[32];
  CK_ULONG n = 32;
  if (fl->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) {
    return absl::InternalError("C_GetSlotList failed");
  }
  for (CK_ULONG i = 0; i < n; ++i) {
    CK_TOKEN_INFO ti;
    if (fl->C_GetTokenInfo(slots[i], &ti) != CKR_OK) {
      continue;
    }
    std::string got(reinterpret_cast<const char*>(ti.label), sizeof(ti.label));
    got.erase(got.find_last_not_of(' ') + 1);
    if (got != label_) {
      continue;
    }
    CK_SESSION_HANDLE s = 0;
    if (fl->C_OpenSession(slots[i], CKF_SERIAL_SESSION, nullptr, nullptr, &s) != CKR_OK) {
      return absl::InternalError("C_OpenSession failed");
    }
    const CK_RV rv = fl->C_Logout(s);
    fl->C_CloseSession(s);
    if (rv != CKR_OK && rv != CKR_USER_NOT_LOGGED_IN) {
      return absl::InternalError(absl::StrCat("C_Logout failed: 0x", absl::Hex(rv)));
    }
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("token ", label_, " not found"));
}

std::string SoftHsm::uri_no_pin() const {
  return absl::StrCat("pkcs11:token=", label_, "?module-path=", kModule);
}

std::string SoftHsm::uri() const { return absl::StrCat(uri_no_pin(), "&pin-value=", pin_); }

}  // namespace hwid::testing
