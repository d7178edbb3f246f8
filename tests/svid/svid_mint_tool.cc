// svid_mint_tool: a test and benchmark driver for SVID/MintX509SVID with any CSR (tests only).
// It authenticates like hwid-svid (its own X509-SVID from the Workload API, mutual TLS, the
// server checked by bundle and SPIFFE ID) but sends the CSR it is given, so tests can show what
// the server's policy refuses (two URI SANs, DNS names, another node's ID).
//   svid_mint_tool --config HELPER.hcl --csr FILE [--ttl N] [--out FILE]
//       one mint; prints "ok <SPIFFE ID>" or "<GRPC_CODE>: <message>" (exit 1)
//   svid_mint_tool --config HELPER.hcl --csr FILE --ttl N --count N [--parallel P]
//       N mints over one channel (P threads); prints "mints=N seconds=S per_second=R"
//   svid_mint_tool --config HELPER.hcl --fetch-count N
//       N Workload API FetchX509SVID calls (first response each, new connection each);
//       prints "fetches=N seconds=S per_second=R"
// Only agent_address, server_address, trust_domain and server_spiffe_id of HELPER.hcl are used
// (the rest must still be a valid hwid-svid configuration). Exit: 0 ok, 1 refused/failed, 2 usage.
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/bytes.h"
#include "common/ossl.h"
#include "svid/config.h"
#include "svid/helper.h"

namespace {

int Usage() {
  std::fprintf(stderr,
               "usage: svid_mint_tool --config HELPER.hcl --csr FILE [--ttl N] [--out FILE]\n"
               "       svid_mint_tool --config HELPER.hcl --csr FILE --ttl N --count N "
               "[--parallel P]\n"
               "       svid_mint_tool --config HELPER.hcl --fetch-count N\n");
  return 2;
}

int Fail(const absl::Status& st) {
  std::printf("%s: %s\n", absl::StatusCodeToString(st.code()).c_str(),
              std::string(st.message()).c_str());
  return 1;
}

// CsrDer reads a PEM or DER PKCS#10 request.
absl::StatusOr<hwid::Bytes> CsrDer(const std::string& path) {
  absl::StatusOr<hwid::Bytes> raw = hwid::ReadFile(path, 1 << 20);
  if (!raw.ok()) return raw.status();
  hwid::OsslPtr<BIO> bio(BIO_new_mem_buf(raw->data(), static_cast<int>(raw->size())));
  hwid::OsslPtr<X509_REQ> req(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  if (req == nullptr) return *raw;  // DER as is
  unsigned char* der = nullptr;
  const int n = i2d_X509_REQ(req.get(), &der);
  if (n <= 0) return absl::InvalidArgumentError("cannot encode the CSR");
  hwid::Bytes out(der, der + n);
  OPENSSL_free(der);
  return out;
}

std::string LeafId(const hwid::Bytes& der) {
  const unsigned char* p = der.data();
  hwid::OsslPtr<X509> c(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (c == nullptr) return "?";
  hwid::OsslPtr<GENERAL_NAMES> sans(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(c.get(), NID_subject_alt_name, nullptr, nullptr)));
  std::string out;
  for (int i = 0; sans != nullptr && i < sk_GENERAL_NAME_num(sans.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans.get(), i);
    if (gn->type == GEN_URI) {
      const ASN1_IA5STRING* s = gn->d.uniformResourceIdentifier;
      absl::StrAppend(&out, out.empty() ? "" : ",",
                      std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                  ASN1_STRING_length(s)));
    }
  }
  return out;
}

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path, csr_path, out_path;
  int64_t ttl = 0, count = 0, parallel = 1, fetch_count = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) return Usage();
    const std::string v = argv[++i];
    bool ok = true;
    if (a == "--config") {
      config_path = v;
    } else if (a == "--csr") {
      csr_path = v;
    } else if (a == "--out") {
      out_path = v;
    } else if (a == "--ttl") {
      ok = absl::SimpleAtoi(v, &ttl);
    } else if (a == "--count") {
      ok = absl::SimpleAtoi(v, &count) && count > 0;
    } else if (a == "--parallel") {
      ok = absl::SimpleAtoi(v, &parallel) && parallel > 0 && parallel <= 64;
    } else if (a == "--fetch-count") {
      ok = absl::SimpleAtoi(v, &fetch_count) && fetch_count > 0;
    } else {
      ok = false;
    }
    if (!ok) return Usage();
  }
  if (config_path.empty() || (csr_path.empty() == (fetch_count == 0))) return Usage();
  absl::StatusOr<hwid::Bytes> text = hwid::ReadFile(config_path, 1 << 20);
  if (!text.ok()) return Fail(text.status());
  absl::StatusOr<hwid::svid::Config> config = hwid::svid::ParseConfig(
      absl::string_view(reinterpret_cast<const char*>(text->data()), text->size()));
  if (!config.ok()) return Fail(config.status());
  hwid::svid::QuietGrpcLogs();

  if (fetch_count > 0) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < fetch_count; ++i) {
      absl::StatusOr<hwid::svid::WorkloadSvid> s = hwid::svid::FetchWorkloadSvid(
          config->agent_address);
      if (!s.ok()) return Fail(s.status());
    }
    const double secs = Seconds(t0);
    std::printf("fetches=%lld seconds=%.3f per_second=%.1f\n", static_cast<long long>(fetch_count),
                secs, static_cast<double>(fetch_count) / secs);
    return 0;
  }

  absl::StatusOr<hwid::Bytes> csr = CsrDer(csr_path);
  if (!csr.ok()) return Fail(csr.status());
  absl::StatusOr<hwid::svid::WorkloadSvid> self =
      hwid::svid::FetchWorkloadSvid(config->agent_address);
  if (!self.ok()) return Fail(self.status());
  absl::StatusOr<std::unique_ptr<hwid::svid::MintClient>> client =
      hwid::svid::MintClient::New(*config, *self);
  if (!client.ok()) return Fail(client.status());

  if (count > 0) {
    // One warm-up mint (connection and TLS handshake), then the timed ones.
    absl::StatusOr<std::vector<hwid::Bytes>> warm = (*client)->MintX509Svid(*csr, ttl);
    if (!warm.ok()) return Fail(warm.status());
    std::atomic<int64_t> next{0};
    std::atomic<bool> failed{false};
    absl::Status first_error;
    std::mutex mu;
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int64_t t = 0; t < parallel; ++t) {
      threads.emplace_back([&] {
        while (!failed.load() && next.fetch_add(1) < count) {
          absl::StatusOr<std::vector<hwid::Bytes>> r = (*client)->MintX509Svid(*csr, ttl);
          if (!r.ok()) {
            std::lock_guard<std::mutex> l(mu);
            if (first_error.ok()) first_error = r.status();
            failed.store(true);
          }
        }
      });
    }
    for (std::thread& t : threads) t.join();
    const double secs = Seconds(t0);
    if (failed.load()) return Fail(first_error);
    std::printf("mints=%lld parallel=%lld seconds=%.3f per_second=%.1f\n",
                static_cast<long long>(count), static_cast<long long>(parallel), secs,
                static_cast<double>(count) / secs);
    return 0;
  }

  absl::StatusOr<std::vector<hwid::Bytes>> chain = (*client)->MintX509Svid(*csr, ttl);
  if (!chain.ok()) return Fail(chain.status());
  if (!out_path.empty()) {
    std::string pem;
    for (const hwid::Bytes& der : *chain) {
      const unsigned char* p = der.data();
      hwid::OsslPtr<X509> c(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
      hwid::OsslPtr<BIO> bio(BIO_new(BIO_s_mem()));
      PEM_write_bio_X509(bio.get(), c.get());
      char* data = nullptr;
      const long n = BIO_get_mem_data(bio.get(), &data);
      pem.append(data, static_cast<size_t>(n));
    }
    absl::Status st = hwid::WriteFile(out_path, hwid::AsSpan(pem), 0644);
    if (!st.ok()) return Fail(st);
  }
  std::printf("ok %s\n", LeafId((*chain)[0]).c_str());
  return 0;
}
