// RawEsysSigner: the raw limit every TPM signing benchmark compares against — a bare ESAPI
// context that loads one key blob under the TCG SRK template and calls Esys_Sign on a fixed
// digest, with nothing else in the loop. Benchmark-only code (calls ESAPI directly on purpose).
#ifndef HWID_BENCH_RAW_ESYS_SIGNER_H_
#define HWID_BENCH_RAW_ESYS_SIGNER_H_

#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "tpm/wire/keyfile.h"
#include "tpm/wire/marshal.h"
#include "tpm/wire/templates.h"

namespace hwid::bench {

class RawEsysSigner {
 public:
  RawEsysSigner(const std::string& tcti_conf, const wire::TpmKeyFile& kf, TPM2_ALG_ID sig_alg) {
    Check(Tss2_TctiLdr_Initialize(tcti_conf.c_str(), &tcti_), "Tss2_TctiLdr_Initialize");
    Check(Esys_Initialize(&esys_, tcti_, nullptr), "Esys_Initialize");
    TPM2B_SENSITIVE_CREATE sens = {};
    TPM2B_PUBLIC srk_tmpl = wire::SrkTemplateEcc();
    TPM2B_DATA outside = {};
    TPML_PCR_SELECTION pcr = {};
    ESYS_TR srk = ESYS_TR_NONE;
    TPM2B_PUBLIC* p = nullptr;
    TPM2B_CREATION_DATA* cd = nullptr;
    TPM2B_DIGEST* ch = nullptr;
    TPMT_TK_CREATION* tk = nullptr;
    Check(Esys_CreatePrimary(esys_, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                             &sens, &srk_tmpl, &outside, &pcr, &srk, &p, &cd, &ch, &tk),
          "Esys_CreatePrimary");
    Esys_Free(p);
    Esys_Free(cd);
    Esys_Free(ch);
    Esys_Free(tk);
    auto pub = wire::ParsePublic(kf.pub);
    auto priv = wire::ParsePrivate(kf.priv);
    if (!pub.ok() || !priv.ok()) {
      Die("RawEsysSigner: cannot parse the key file");
    }
    Check(Esys_Load(esys_, srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &*priv, &*pub, &key_),
          "Esys_Load");
    Check(Esys_FlushContext(esys_, srk), "Esys_FlushContext");
    scheme_.scheme = sig_alg;
    scheme_.details.any.hashAlg = TPM2_ALG_SHA256;
  }
  RawEsysSigner(const RawEsysSigner&) = delete;
  RawEsysSigner& operator=(const RawEsysSigner&) = delete;
  ~RawEsysSigner() {
    Esys_FlushContext(esys_, key_);
    Esys_Finalize(&esys_);
    Tss2_TctiLdr_Finalize(&tcti_);
  }

  // Sign: one TPM2_Sign of `d` (a SHA-256 digest); exits the benchmark on failure.
  void Sign(const TPM2B_DIGEST& d) {
    TPMT_TK_HASHCHECK v = {};
    v.tag = TPM2_ST_HASHCHECK;
    v.hierarchy = TPM2_RH_NULL;
    TPMT_SIGNATURE* sig = nullptr;
    Check(Esys_Sign(esys_, key_, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &d, &scheme_, &v, &sig),
          "Esys_Sign");
    Esys_Free(sig);
  }

 private:
  [[noreturn]] static void Die(const char* what) {
    std::fprintf(stderr, "%s\n", what);
    std::exit(1);
  }
  static void Check(TSS2_RC rc, const char* what) {
    if (rc != TSS2_RC_SUCCESS) {
      std::fprintf(stderr, "%s failed: 0x%x\n", what, rc);
      std::exit(1);
    }
  }

  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* esys_ = nullptr;
  ESYS_TR key_ = ESYS_TR_NONE;
  TPMT_SIG_SCHEME scheme_ = {};
};

}  // namespace hwid::bench

#endif  // HWID_BENCH_RAW_ESYS_SIGNER_H_
