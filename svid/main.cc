// hwid-svid: SPIRE-issued X509-SVIDs whose private keys are made and kept in a TPM or a PKCS#11
// token (docs/svid.md).
//   hwid-svid mint --config FILE   mint once, write the files, exit
//   hwid-svid run  --config FILE   mint, then renew at half of each lifetime until SIGTERM
// Exit status: 0 success, 1 operational error (the message names the step and what to check),
// 2 usage or configuration error.
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/bytes.h"
#include "svid/config.h"
#include "svid/helper.h"

namespace {

int Usage() {
  std::fprintf(stderr,
               "usage: hwid-svid mint --config FILE\n"
               "       hwid-svid run --config FILE\n"
               "see docs/svid.md for the configuration keys\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 || std::string(argv[2]) != "--config") return Usage();
  const std::string mode = argv[1];
  if (mode != "mint" && mode != "run") return Usage();
  absl::StatusOr<hwid::Bytes> text = hwid::ReadFile(argv[3], 1 << 20);
  if (!text.ok()) {
    std::fprintf(stderr, "hwid-svid: %s\n", std::string(text.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<hwid::svid::Config> config = hwid::svid::ParseConfig(
      absl::string_view(reinterpret_cast<const char*>(text->data()), text->size()));
  if (!config.ok()) {
    std::fprintf(stderr, "hwid-svid: %s: %s\n", argv[3],
                 std::string(config.status().message()).c_str());
    return 2;
  }
  hwid::svid::QuietGrpcLogs();
  if (mode == "run") return hwid::svid::Run(*config);
  absl::StatusOr<hwid::svid::MintResult> r = hwid::svid::MintOnce(*config);
  if (!r.ok()) {
    std::fprintf(stderr, "hwid-svid: %s\n", std::string(r.status().message()).c_str());
    return 1;
  }
  std::printf("%s minted (key: %s); files in %s\n", r->spiffe_id.c_str(),
              r->key_description.c_str(), config->cert_dir.c_str());
  return 0;
}
