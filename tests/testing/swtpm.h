// A private swtpm (software TPM 2.0) for tests: a copy of the provisioned template state in its
// own temporary directory, served on free loopback ports by a `swtpm socket` child process that
// this object starts, waits for and stops.
//
// The template ($HWID_SWTPM_TEMPLATE, made by swtpm-setup/swtpm-provision-template; CTest's
// fixture `swtpm_template` provides it) holds the RSA-2048 EK (0x81010001, cert NV 0x01c00002),
// the ECC P-384 EK (0x81010016, cert NV 0x01c00016), the TCG P-256 EK (0x81010002, cert NV
// 0x01c0000a), the platform cert (NV 0x01c08000), PCR banks sha256 + sha1, and the local CA.
//
// Uses only POSIX, abseil and the standard library; TPM commands in tests go through tpm2-tools or
// hwid's own tpm/ library with tcti().
#ifndef HWID_TESTS_TESTING_SWTPM_H_
#define HWID_TESTS_TESTING_SWTPM_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hwid::testing {

class Swtpm {
 public:
  // Start copies $HWID_SWTPM_TEMPLATE/state (and ek-ca.pem, ek-root.pem) into a fresh mkdtemp
  // directory under $TMPDIR (default /tmp), fork/execs `swtpm socket --tpm2` in the foreground as
  // a child of this process on a free loopback port pair (server P, control P+1, as tcti-swtpm
  // expects; retried with another pair if the bind races), and waits (bounded, 10 s) until it
  // answers TPM2_GetRandom. The child gets PR_SET_PDEATHSIG so it dies with this process' calling
  // thread. Errors: FAILED_PRECONDITION when the template or the swtpm binary is missing,
  // UNAVAILABLE when swtpm does not come up (the message carries the tail of its log).
  static absl::StatusOr<std::unique_ptr<Swtpm>> Start();

  // StartFrom is Start with the TPM state (and CA files) copied from `source_dir` instead of the
  // template: `source_dir` has the layout of dir() (state/, ek-ca.pem, ek-root.pem, and when
  // present other-ca.pem, certs/, profile), e.g. another Swtpm's dir() after its Stop(). Two swtpms started from one directory are clones of one TPM.
  static absl::StatusOr<std::unique_ptr<Swtpm>> StartFrom(const std::string& source_dir);

  // StartProfile is StartFrom($HWID_SWTPM_PROFILES/<name>): a swtpm provisioned with the
  // swtpm-setup profile `name` (swtpm-setup/README.md "Profiles"; CTest's fixture swtpm_profiles
  // provides the templates, tests declare SWTPM_PROFILES in hwid_add_test). Besides the state and
  // the CA files, other-ca.pem (profile wrong-ca), certs/ and profile are copied. Errors:
  // FAILED_PRECONDITION when HWID_SWTPM_PROFILES is unset or the profile's template is missing or
  // not provisioned; then as StartFrom.
  static absl::StatusOr<std::unique_ptr<Swtpm>> StartProfile(const std::string& name);

  Swtpm(const Swtpm&) = delete;
  Swtpm& operator=(const Swtpm&) = delete;

  // ~Swtpm stops exactly its own child (see Stop) and removes dir(), unless the environment
  // variable HWID_SWTPM_KEEP_DIR is set (then the directory is left for debugging).
  ~Swtpm();

  // tcti is "swtpm:host=127.0.0.1,port=<port()>"; it stays the same across Restart().
  const std::string& tcti() const { return tcti_; }
  int port() const { return port_; }
  int ctrl_port() const { return port_ + 1; }
  // dir is the private directory: dir()/state (TPM state), dir()/swtpm.log, the CA files.
  const std::string& dir() const { return dir_; }
  // ek_ca_bundle is the path of a PEM file with the local root CA and its intermediate.
  std::string ek_ca_bundle() const { return dir_ + "/ek-ca.pem"; }
  // ek_root is the path of a PEM file with the local root CA only.
  std::string ek_root() const { return dir_ + "/ek-root.pem"; }
  // other_ca is the path of the second CA's bundle (root + intermediate) of the profile wrong-ca;
  // the file exists only for that profile.
  std::string other_ca() const { return dir_ + "/other-ca.pem"; }
  // pid of the running swtpm child, or -1 when stopped.
  pid_t pid() const { return pid_; }

  // Restart stops swtpm gracefully and starts it again on the same state and the same ports
  // (simulates a TPM restart: NV and persistent objects survive, transient objects and sessions
  // are gone). Fails with UNAVAILABLE if the ports cannot be re-bound within a few seconds.
  absl::Status Restart();

  // Stop sends CMD_SHUTDOWN on the control channel, then SIGTERM, then SIGKILL to its own child
  // (each step bounded) and reaps it. OK when already stopped. Does nothing in a forked child
  // process (e.g. a gtest death test), which does not own the swtpm.
  absl::Status Stop();

 private:
  Swtpm(std::string dir, std::string swtpm_binary);

  // Launch starts swtpm on port_ (when port_ > 0: same ports, retried while they are still
  // being released) or on a newly picked free pair, and waits until it answers.
  absl::Status Launch(bool keep_ports);
  absl::Status SpawnAndWait(int port, bool* bind_failed);

  std::string dir_;
  std::string swtpm_binary_;
  std::string tcti_;
  int port_ = 0;
  pid_t pid_ = -1;
  pid_t owner_pid_ = -1;
};

// GlobalSwtpm is the swtpm that hwid_testing_swtpm's main() starts for the whole test binary
// before RUN_ALL_TESTS (HWID_TCTI, TPM2TOOLS_TCTI, TPM2OPENSSL_TCTI, HWID_EK_CA, HWID_EK_ROOT
// point at it). Aborts with a message when called without that main().
Swtpm& GlobalSwtpm();

}  // namespace hwid::testing

#endif  // HWID_TESTS_TESTING_SWTPM_H_
