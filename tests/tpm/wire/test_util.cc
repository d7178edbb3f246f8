#include "tests/tpm/wire/test_util.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>
#include <tss2/tss2_mu.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>

#include "tpm/wire/crypto.h"

namespace hwid::wire::testing {
namespace {

[[noreturn]] void Die(const std::string& why) {
  ADD_FAILURE() << why;
  std::fprintf(stderr, "test_util: %s\n", why.c_str());
  std::abort();
}

const EVP_MD* Md(TPMI_ALG_HASH alg) {
  absl::StatusOr<const EVP_MD*> md = hwid::wire::DigestForAlg(alg);
  if (!md.ok()) {
    Die(std::string(md.status().message()));
  }
  return *md;
}

EVP_PKEY* Cached(const std::string& key, EVP_PKEY* (*make)(const std::string&)) {
  static auto* cache = new std::map<std::string, OsslPtr<EVP_PKEY>>();
  auto it = cache->find(key);
  if (it == cache->end()) {
    it = cache->emplace(key, OsslPtr<EVP_PKEY>(make(key))).first;
  }
  return it->second.get();
}

EVP_PKEY* MakeEc(const std::string& spec) {
  const std::string group = spec.substr(0, spec.find('#'));
  EVP_PKEY* k = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", group.c_str());
  if (k == nullptr) {
    Die("EC keygen");
  }
  return k;
}

EVP_PKEY* MakeRsa(const std::string& spec) {
  const size_t bits = std::strtoul(spec.c_str(), nullptr, 10);
  EVP_PKEY* k = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", bits);
  if (k == nullptr) {
    Die("RSA keygen");
  }
  return k;
}

Bytes BnParam(EVP_PKEY* pkey, const char* name, size_t width) {
  BIGNUM* raw = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, name, &raw) != 1) {
    Die(std::string("EVP_PKEY_get_bn_param ") + name);
  }
  OsslPtr<BIGNUM> bn(raw);
  Bytes out(width);
  if (BN_bn2binpad(bn.get(), out.data(), static_cast<int>(width)) < 0) {
    Die("BN_bn2binpad");
  }
  return out;
}

size_t FieldBytes(EVP_PKEY* pkey) { return (static_cast<size_t>(EVP_PKEY_get_bits(pkey)) + 7) / 8; }

template <typename T, typename F>
Bytes MuMarshal(const T& v, F fn) {
  Bytes buf(sizeof(T) + 64);
  size_t off = 0;
  if (fn(&v, buf.data(), buf.size(), &off) != TSS2_RC_SUCCESS) {
    Die("tss2-mu marshal");
  }
  buf.resize(off);
  return buf;
}

}  // namespace

Bytes Hex(std::string_view hex) {
  absl::StatusOr<Bytes> b = HexDecode(absl::string_view(hex.data(), hex.size()));
  if (!b.ok()) {
    Die("bad hex literal: " + std::string(hex));
  }
  return *b;
}

Bytes ReadTestdata(const std::string& name) {
  absl::StatusOr<Bytes> b = ReadFile(std::string(HWID_WIRE_TESTDATA) + "/" + name);
  if (!b.ok()) {
    Die("cannot read test vector " + name + ": " + std::string(b.status().message()));
  }
  return *b;
}

EVP_PKEY* EcKey(const char* group) { return Cached(group, &MakeEc); }
EVP_PKEY* EcKey2() { return Cached("P-256#2", &MakeEc); }
EVP_PKEY* RsaKey(int bits) { return Cached(std::to_string(bits), &MakeRsa); }
EVP_PKEY* RsaKey2() { return Cached("2048#2", &MakeRsa); }

namespace {

OsslPtr<BIGNUM> RocaPrime(int bits, const BIGNUM* m, BN_CTX* ctx) {
  OsslPtr<BIGNUM> g(BN_new()), a(BN_new()), base(BN_new()), k(BN_new()), p(BN_new());
  if (!g || !a || !base || !k || !p || BN_set_word(g.get(), 65537) != 1) {
    std::abort();
  }
  for (;;) {
    if (BN_rand(a.get(), 64, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
        BN_mod_exp(base.get(), g.get(), a.get(), m, ctx) != 1 ||
        BN_rand(k.get(), bits - BN_num_bits(m) + 1, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
        BN_mul(p.get(), k.get(), m, ctx) != 1 || BN_add(p.get(), p.get(), base.get()) != 1) {
      std::abort();
    }
    // The top two bits set, so that p*q has exactly twice the bits.
    if (BN_num_bits(p.get()) == bits && BN_is_bit_set(p.get(), bits - 2) &&
        BN_check_prime(p.get(), ctx, nullptr) == 1) {
      return p;
    }
  }
}

Bytes MakeRocaModulus(int bits) {
  OsslPtr<BN_CTX> ctx(BN_CTX_new());
  OsslPtr<BIGNUM> m(BN_new()), n(BN_new());
  if (!ctx || !m || !n || BN_one(m.get()) != 1) {
    std::abort();
  }
  int primes = 0;
  for (BN_ULONG c = 2; primes < 39; ++c) {
    bool prime = true;
    for (BN_ULONG d = 2; d * d <= c; ++d) {
      prime = prime && c % d != 0;
    }
    if (prime) {
      ++primes;
      if (BN_mul_word(m.get(), c) != 1) {
        std::abort();
      }
    }
  }
  OsslPtr<BIGNUM> p = RocaPrime(bits / 2, m.get(), ctx.get());
  OsslPtr<BIGNUM> q = RocaPrime(bits / 2, m.get(), ctx.get());
  if (BN_mul(n.get(), p.get(), q.get(), ctx.get()) != 1 || BN_num_bits(n.get()) != bits) {
    std::abort();
  }
  Bytes out(static_cast<size_t>(bits) / 8);
  if (BN_bn2binpad(n.get(), out.data(), static_cast<int>(out.size())) < 0) {
    std::abort();
  }
  return out;
}

}  // namespace

const Bytes& RocaModulus(int bits) {
  static auto* cache = new std::map<int, Bytes>();
  auto it = cache->find(bits);
  if (it == cache->end()) {
    it = cache->emplace(bits, MakeRocaModulus(bits)).first;
  }
  return it->second;
}

TPMT_PUBLIC WithKey(TPMT_PUBLIC tmpl, EVP_PKEY* pkey) {
  if (EVP_PKEY_is_a(pkey, "RSA")) {
    const size_t width = static_cast<size_t>(EVP_PKEY_get_bits(pkey)) / 8;
    const Bytes n = BnParam(pkey, OSSL_PKEY_PARAM_RSA_N, width);
    tmpl.type = TPM2_ALG_RSA;
    tmpl.parameters.rsaDetail.keyBits = static_cast<UINT16>(width * 8);
    const Bytes e = BnParam(pkey, OSSL_PKEY_PARAM_RSA_E, 4);
    const uint32_t exponent = (uint32_t{e[0]} << 24) | (uint32_t{e[1]} << 16) |
                              (uint32_t{e[2]} << 8) | e[3];
    tmpl.parameters.rsaDetail.exponent = exponent == 65537 ? 0 : exponent;
    tmpl.unique.rsa.size = static_cast<UINT16>(n.size());
    std::memcpy(tmpl.unique.rsa.buffer, n.data(), n.size());
  } else {
    const size_t width = FieldBytes(pkey);
    const Bytes x = BnParam(pkey, OSSL_PKEY_PARAM_EC_PUB_X, width);
    const Bytes y = BnParam(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, width);
    tmpl.type = TPM2_ALG_ECC;
    const int bits = EVP_PKEY_get_bits(pkey);
    tmpl.parameters.eccDetail.curveID = bits == 256   ? TPM2_ECC_NIST_P256
                                        : bits == 384 ? TPM2_ECC_NIST_P384
                                                      : TPM2_ECC_NIST_P521;
    tmpl.unique.ecc.x.size = static_cast<UINT16>(x.size());
    std::memcpy(tmpl.unique.ecc.x.buffer, x.data(), x.size());
    tmpl.unique.ecc.y.size = static_cast<UINT16>(y.size());
    std::memcpy(tmpl.unique.ecc.y.buffer, y.data(), y.size());
  }
  return tmpl;
}

TPMT_SIGNATURE Sign(EVP_PKEY* pkey, TPMI_ALG_SIG_SCHEME scheme, TPMI_ALG_HASH hash,
                    ByteSpan msg) {
  OsslPtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (EVP_DigestSignInit(ctx.get(), &pctx, Md(hash), nullptr, pkey) != 1) {
    Die("EVP_DigestSignInit");
  }
  if (scheme == TPM2_ALG_RSAPSS) {
    EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
    EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
  } else if (scheme == TPM2_ALG_RSASSA) {
    EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING);
  }
  size_t len = 0;
  if (EVP_DigestSign(ctx.get(), nullptr, &len, msg.data(), msg.size()) != 1) {
    Die("EVP_DigestSign size");
  }
  Bytes sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, msg.data(), msg.size()) != 1) {
    Die("EVP_DigestSign");
  }
  sig.resize(len);
  TPMT_SIGNATURE out;
  std::memset(&out, 0, sizeof(out));
  out.sigAlg = scheme;
  if (scheme == TPM2_ALG_ECDSA) {
    const unsigned char* p = sig.data();
    OsslPtr<ECDSA_SIG> esig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size())));
    if (esig == nullptr) {
      Die("d2i_ECDSA_SIG");
    }
    const size_t width = FieldBytes(pkey);
    out.signature.ecdsa.hash = hash;
    out.signature.ecdsa.signatureR.size = static_cast<UINT16>(width);
    BN_bn2binpad(ECDSA_SIG_get0_r(esig.get()), out.signature.ecdsa.signatureR.buffer,
                 static_cast<int>(width));
    out.signature.ecdsa.signatureS.size = static_cast<UINT16>(width);
    BN_bn2binpad(ECDSA_SIG_get0_s(esig.get()), out.signature.ecdsa.signatureS.buffer,
                 static_cast<int>(width));
  } else {
    out.signature.rsassa.hash = hash;
    out.signature.rsassa.sig.size = static_cast<UINT16>(sig.size());
    std::memcpy(out.signature.rsassa.sig.buffer, sig.data(), sig.size());
  }
  return out;
}

Bytes MuMarshalAttest(const TPMS_ATTEST& a) { return MuMarshal(a, &Tss2_MU_TPMS_ATTEST_Marshal); }
Bytes MuMarshalSignature(const TPMT_SIGNATURE& s) {
  return MuMarshal(s, &Tss2_MU_TPMT_SIGNATURE_Marshal);
}
Bytes MuMarshalTpmtPublic(const TPMT_PUBLIC& p) {
  return MuMarshal(p, &Tss2_MU_TPMT_PUBLIC_Marshal);
}

Bytes Sha(TPMI_ALG_HASH alg, ByteSpan data) {
  Bytes out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &len, Md(alg), nullptr) != 1) {
    Die("EVP_Digest");
  }
  out.resize(len);
  return out;
}

}  // namespace hwid::wire::testing
