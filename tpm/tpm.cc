#include "tpm/tpm.h"

#include <openssl/crypto.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/string_view.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/access.h"
#include "common/status_macros.h"
#include "tpm/error.h"
#include "tpm/wire/attest.h"
#include "tpm/wire/ekcert.h"
#include "tpm/wire/marshal.h"

namespace hwid::tpm {
namespace {

// EsysPtr owns memory ESAPI returns (freed with Esys_Free; wiped first, as outputs may hold
// secrets such as credential-activation results).
struct EsysFree {
  size_t size = 0;
  void operator()(void* p) const noexcept {
    if (p != nullptr) {
      Esys_Free(p);
    }
  }
};
template <typename T>
using EsysPtr = std::unique_ptr<T, EsysFree>;

template <typename T>
void CleanseAndFree(EsysPtr<T>& p) {
  if (p) {
    OPENSSL_cleanse(p.get(), sizeof(T));
    p.reset();
  }
}

bool IsHandleGone(TSS2_RC rc) {
  TSS2_RC base = TpmRcBase(rc);
  return base == TPM2_RC_REFERENCE_H0 || base == TPM2_RC_HANDLE ||
         rc == TSS2_ESYS_RC_BAD_TR;
}

std::string FourChars(uint32_t v) {
  std::string s;
  for (int shift = 24; shift >= 0; shift -= 8) {
    char c = static_cast<char>((v >> shift) & 0xff);
    if (c != '\0') {
      s.push_back(c);
    }
  }
  return std::string(absl::StripAsciiWhitespace(s));
}

// PublicShape returns a copy of `pub` with the unique field cleared, for comparing an object
// against the template it should have been created from.
TPMT_PUBLIC PublicShape(const TPMT_PUBLIC& pub) {
  TPMT_PUBLIC p = pub;
  std::memset(&p.unique, 0, sizeof(p.unique));
  return p;
}

bool SameShape(const TPMT_PUBLIC& a, const TPMT_PUBLIC& b) {
  auto ma = wire::MarshalTpmtPublic(PublicShape(a));
  auto mb = wire::MarshalTpmtPublic(PublicShape(b));
  return ma.ok() && mb.ok() && *ma == *mb;
}

bool SameKeyAlg(const TPMT_PUBLIC& a, const TPMT_PUBLIC& b) {
  if (a.type != b.type) {
    return false;
  }
  if (a.type == TPM2_ALG_ECC) {
    return a.parameters.eccDetail.curveID == b.parameters.eccDetail.curveID;
  }
  return a.parameters.rsaDetail.keyBits == b.parameters.rsaDetail.keyBits;
}

constexpr uint32_t kSrkHandle = 0x81000001;
// The NV range of the EK certificate chain (TCG EK Credential Profile for TPM 2.0).
constexpr uint32_t kEkChainNvFirst = 0x01c00100;
constexpr uint32_t kEkChainNvLast = 0x01c001ff;

// DeviceAccessHint: for a "device:PATH" TCTI this process may not open, says who is asking, the
// device's owner, group and mode, and what to change ("" when access is not the problem).
std::string DeviceAccessHint(absl::string_view tcti) {
  absl::string_view path = tcti;
  if (!absl::ConsumePrefix(&path, "device:")) {
    return "";
  }
  const std::string p = path.empty() ? "/dev/tpmrm0" : std::string(path);
  struct stat st;
  if (stat(p.c_str(), &st) != 0) {
    return absl::StrCat("; ", p, " does not exist (", std::strerror(errno),
                        "): is the TPM driver loaded (tpm_tis, tpm_crb)?");
  }
  const std::string problem = AccessProblem(p, R_OK | W_OK, "read and write");
  if (problem.empty()) {
    return "";
  }
  const std::string g = FileGroupName(p);
  return absl::StrCat("; ", problem, ": run the program as a member of group ", g,
                      " (`usermod -aG ", g, " USER`, or the service's SupplementaryGroups=", g,
                      "), or give the device to its user with a udev rule");
}

}  // namespace

struct Tpm::Impl {
  TSS2_TCTI_CONTEXT* tcti = nullptr;
  ESYS_CONTEXT* esys = nullptr;
  uint16_t nv_buffer_max = 0;
  ~Impl() {
    if (esys != nullptr) {
      Esys_Finalize(&esys);
    }
    if (tcti != nullptr) {
      Tss2_TctiLdr_Finalize(&tcti);
    }
  }
};

std::string DefaultTcti() {
  const char* env = std::getenv("HWID_TCTI");
  if (env != nullptr && env[0] != '\0') {
    return env;
  }
  return "device:/dev/tpmrm0";
}

std::string FormatHandle(uint32_t handle) { return absl::StrFormat("0x%08x", handle); }

absl::StatusOr<uint32_t> ParseHandle(absl::string_view s) {
  absl::string_view in = s;
  if (absl::StartsWithIgnoreCase(in, "0x")) {
    in.remove_prefix(2);
  }
  uint32_t v = 0;
  if (in.empty() || in.size() > 8 || !absl::SimpleHexAtoi(in, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", s, "' is not a TPM handle (expected hex such as 0x81000001)"));
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// TpmObject

TpmObject::TpmObject(Tpm* tpm, uint32_t tr, Kind kind, std::string label)
    : tpm_(tpm), tr_(tr), kind_(kind), label_(std::move(label)) {}

TpmObject::TpmObject(TpmObject&& other) noexcept
    : tpm_(std::exchange(other.tpm_, nullptr)),
      tr_(std::exchange(other.tr_, 0)),
      kind_(other.kind_),
      label_(std::move(other.label_)) {}

TpmObject& TpmObject::operator=(TpmObject&& other) noexcept {
  if (this != &other) {
    Reset();
    tpm_ = std::exchange(other.tpm_, nullptr);
    tr_ = std::exchange(other.tr_, 0);
    kind_ = other.kind_;
    label_ = std::move(other.label_);
  }
  return *this;
}

TpmObject::~TpmObject() { Reset(); }

void TpmObject::Reset() {
  if (tpm_ != nullptr) {
    tpm_->FlushOrClose(tr_, kind_);
    tpm_ = nullptr;
    tr_ = 0;
  }
}

uint32_t TpmObject::Release() {
  tpm_ = nullptr;
  return std::exchange(tr_, 0);
}

void Tpm::FlushOrClose(uint32_t tr, TpmObject::Kind kind) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (kind == TpmObject::Kind::kTransient || kind == TpmObject::Kind::kSession) {
    ++commands_;
    TSS2_RC rc = Esys_FlushContext(impl_->esys, tr);
    if (rc != TSS2_RC_SUCCESS) {
      // The object is gone (TPM restarted): drop ESAPI's metadata for it.
      ESYS_TR t = tr;
      Esys_TR_Close(impl_->esys, &t);
    }
  } else {
    ESYS_TR t = tr;
    Esys_TR_Close(impl_->esys, &t);
  }
}

// ---------------------------------------------------------------------------------------------
// Tpm

Tpm::Tpm(std::string tcti, std::unique_ptr<Impl> impl)
    : tcti_(std::move(tcti)), impl_(std::move(impl)) {}

Tpm::~Tpm() = default;

absl::StatusOr<std::unique_ptr<Tpm>> Tpm::Open(const std::string& tcti_in) {
  std::string tcti = tcti_in.empty() ? DefaultTcti() : tcti_in;
  // The TSS logs every failed command to stderr (including expected ones, such as probing an
  // absent NV index). hwid reports errors itself; keep the TSS quiet unless asked.
  if (std::getenv("TSS2_LOG") == nullptr) {
    setenv("TSS2_LOG", "all+NONE", 0);
  }
  auto impl = std::make_unique<Impl>();
  TSS2_RC rc = Tss2_TctiLdr_Initialize(tcti.c_str(), &impl->tcti);
  if (rc != TSS2_RC_SUCCESS) {
    return absl::UnavailableError(absl::StrCat(
        "cannot open TPM connection '", tcti, "': ", TssError(rc, "Tss2_TctiLdr_Initialize").message(),
        DeviceAccessHint(tcti),
        "; check HWID_TCTI / tcti= (device:/dev/tpmrm0, tabrmd:, swtpm:host=H,port=P)"));
  }
  rc = Esys_Initialize(&impl->esys, impl->tcti, nullptr);
  if (rc != TSS2_RC_SUCCESS) {
    return absl::UnavailableError(
        absl::StrCat("cannot open TPM '", tcti, "': ", TssError(rc, "Esys_Initialize").message()));
  }
  return std::unique_ptr<Tpm>(new Tpm(std::move(tcti), std::move(impl)));
}

absl::StatusOr<Bytes> Tpm::GetRandom(size_t n) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Bytes out;
  while (out.size() < n) {
    EsysPtr<TPM2B_DIGEST> r;
    TPM2B_DIGEST* raw = nullptr;
    ++commands_;
    TSS2_RC rc = Esys_GetRandom(impl_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                static_cast<UINT16>(std::min<size_t>(n - out.size(), 32)), &raw);
    r.reset(raw);
    RETURN_IF_ERROR(TssError(rc, "TPM2_GetRandom"));
    if (r->size == 0) {
      return absl::InternalError("TPM2_GetRandom returned no bytes");
    }
    out.insert(out.end(), r->buffer, r->buffer + r->size);
  }
  out.resize(n);
  return out;
}

absl::StatusOr<TpmInfo> Tpm::GetInfo() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  TpmInfo info;
  std::map<uint32_t, uint32_t> props;
  for (uint32_t group : {TPM2_PT_FIXED, TPM2_PT_VAR}) {
    uint32_t next = group;
    for (int guard = 0; guard < 16; ++guard) {
      TPMS_CAPABILITY_DATA* raw = nullptr;
      TPMI_YES_NO more = TPM2_NO;
      ++commands_;
      TSS2_RC rc = Esys_GetCapability(impl_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                      TPM2_CAP_TPM_PROPERTIES, next, TPM2_MAX_TPM_PROPERTIES,
                                      &more, &raw);
      EsysPtr<TPMS_CAPABILITY_DATA> data(raw);
      RETURN_IF_ERROR(TssError(rc, "TPM2_GetCapability(TPM_PROPERTIES)"));
      const TPML_TAGGED_TPM_PROPERTY& list = data->data.tpmProperties;
      if (list.count == 0) {
        break;
      }
      for (uint32_t i = 0; i < list.count && i < TPM2_MAX_TPM_PROPERTIES; ++i) {
        props[list.tpmProperty[i].property] = list.tpmProperty[i].value;
      }
      next = list.tpmProperty[list.count - 1].property + 1;
      if (more == TPM2_NO || next >= group + 0x100) {
        break;
      }
    }
  }
  info.properties = std::move(props);
  info.manufacturer_id = info.Property(TPM2_PT_MANUFACTURER);
  info.manufacturer = FourChars(info.manufacturer_id);
  info.vendor = absl::StrCat(FourChars(info.Property(TPM2_PT_VENDOR_STRING_1)),
                             FourChars(info.Property(TPM2_PT_VENDOR_STRING_2)),
                             FourChars(info.Property(TPM2_PT_VENDOR_STRING_3)),
                             FourChars(info.Property(TPM2_PT_VENDOR_STRING_4)));
  uint32_t fw1 = info.Property(TPM2_PT_FIRMWARE_VERSION_1);
  uint32_t fw2 = info.Property(TPM2_PT_FIRMWARE_VERSION_2);
  info.firmware_version =
      absl::StrFormat("%u.%u.%u.%u", fw1 >> 16, fw1 & 0xffff, fw2 >> 16, fw2 & 0xffff);
  info.spec = absl::StrFormat("%s level %u revision %u (%u, day %u)",
                              FourChars(info.Property(TPM2_PT_FAMILY_INDICATOR)),
                              info.Property(TPM2_PT_LEVEL), info.Property(TPM2_PT_REVISION),
                              info.Property(TPM2_PT_YEAR), info.Property(TPM2_PT_DAY_OF_YEAR));
  info.in_lockout = (info.Property(TPM2_PT_PERMANENT) & TPMA_PERMANENT_INLOCKOUT) != 0;
  info.lockout_counter = info.Property(TPM2_PT_LOCKOUT_COUNTER);
  info.max_auth_fail = info.Property(TPM2_PT_MAX_AUTH_FAIL);
  info.lockout_interval = info.Property(TPM2_PT_LOCKOUT_INTERVAL);
  info.lockout_recovery = info.Property(TPM2_PT_LOCKOUT_RECOVERY);
  info.transient_slots = info.Property(TPM2_PT_HR_TRANSIENT_MIN);
  info.loaded_transient =
      info.Property(TPM2_PT_HR_TRANSIENT_MIN) - info.Property(TPM2_PT_HR_TRANSIENT_AVAIL);

  TPMS_CAPABILITY_DATA* raw = nullptr;
  TPMI_YES_NO more = TPM2_NO;
  ++commands_;
  TSS2_RC rc = Esys_GetCapability(impl_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                  TPM2_CAP_PCRS, 0, TPM2_NUM_PCR_BANKS, &more, &raw);
  EsysPtr<TPMS_CAPABILITY_DATA> pcrs(raw);
  RETURN_IF_ERROR(TssError(rc, "TPM2_GetCapability(PCRS)"));
  const TPML_PCR_SELECTION& sel = pcrs->data.assignedPCR;
  for (uint32_t i = 0; i < sel.count && i < TPM2_NUM_PCR_BANKS; ++i) {
    PcrBankInfo bank{sel.pcrSelections[i].hash, {}};
    for (uint32_t byte = 0; byte < sel.pcrSelections[i].sizeofSelect && byte < TPM2_PCR_SELECT_MAX; ++byte) {
      for (uint32_t bit = 0; bit < 8; ++bit) {
        if (sel.pcrSelections[i].pcrSelect[byte] & (1u << bit)) {
          bank.pcrs.push_back(byte * 8 + bit);
        }
      }
    }
    info.pcr_banks.push_back(std::move(bank));
  }
  return info;
}

// ---------------------------------------------------------------------------------------------
// NV and EK certificates

absl::StatusOr<Bytes> Tpm::NvRead(uint32_t nv_index) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  const std::string label = absl::StrCat("NV index ", FormatHandle(nv_index));
  ESYS_TR nv = ESYS_TR_NONE;
  ++commands_;
  TSS2_RC rc = Esys_TR_FromTPMPublic(impl_->esys, nv_index, ESYS_TR_NONE, ESYS_TR_NONE,
                                     ESYS_TR_NONE, &nv);
  RETURN_IF_ERROR(TssError(rc, "TPM2_NV_ReadPublic", label));
  TpmObject nv_obj(this, nv, TpmObject::Kind::kNv, label);

  TPM2B_NV_PUBLIC* pub_raw = nullptr;
  TPM2B_NAME* name_raw = nullptr;
  ++commands_;
  rc = Esys_NV_ReadPublic(impl_->esys, nv, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub_raw,
                          &name_raw);
  EsysPtr<TPM2B_NV_PUBLIC> nv_pub(pub_raw);
  EsysPtr<TPM2B_NAME> nv_name(name_raw);
  RETURN_IF_ERROR(TssError(rc, "TPM2_NV_ReadPublic", label));
  const uint16_t size = nv_pub->nvPublic.dataSize;
  const TPMA_NV attrs = nv_pub->nvPublic.attributes;
  if ((attrs & TPMA_NV_WRITTEN) == 0) {
    return absl::NotFoundError(absl::StrCat(label, " is defined but was never written"));
  }
  ESYS_TR auth = nv;
  if ((attrs & TPMA_NV_AUTHREAD) == 0) {
    if ((attrs & TPMA_NV_OWNERREAD) != 0) {
      auth = ESYS_TR_RH_OWNER;
    } else if ((attrs & TPMA_NV_PPREAD) != 0) {
      auth = ESYS_TR_RH_PLATFORM;
    } else {
      return absl::PermissionDeniedError(
          absl::StrCat(label, " is not readable with index, owner or platform authorization"));
    }
  }
  if (impl_->nv_buffer_max == 0) {
    TPMS_CAPABILITY_DATA* raw = nullptr;
    TPMI_YES_NO more = TPM2_NO;
    ++commands_;
    rc = Esys_GetCapability(impl_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                            TPM2_CAP_TPM_PROPERTIES, TPM2_PT_NV_BUFFER_MAX, 1, &more, &raw);
    EsysPtr<TPMS_CAPABILITY_DATA> data(raw);
    impl_->nv_buffer_max = 512;
    if (rc == TSS2_RC_SUCCESS && data->data.tpmProperties.count == 1 &&
        data->data.tpmProperties.tpmProperty[0].property == TPM2_PT_NV_BUFFER_MAX) {
      impl_->nv_buffer_max = static_cast<uint16_t>(
          std::min<uint32_t>(data->data.tpmProperties.tpmProperty[0].value, sizeof(TPM2B_MAX_NV_BUFFER::buffer)));
    }
  }
  Bytes out;
  out.reserve(size);
  while (out.size() < size) {
    uint16_t chunk = static_cast<uint16_t>(std::min<size_t>(impl_->nv_buffer_max, size - out.size()));
    TPM2B_MAX_NV_BUFFER* data_raw = nullptr;
    ++commands_;
    rc = Esys_NV_Read(impl_->esys, auth, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, chunk,
                      static_cast<uint16_t>(out.size()), &data_raw);
    EsysPtr<TPM2B_MAX_NV_BUFFER> data(data_raw);
    RETURN_IF_ERROR(TssError(rc, "TPM2_NV_Read", label));
    if (data->size == 0 || data->size > chunk) {
      return absl::InternalError(absl::StrCat("TPM2_NV_Read on ", label, " returned ", data->size,
                                              " bytes for a request of ", chunk));
    }
    out.insert(out.end(), data->buffer, data->buffer + data->size);
  }
  return out;
}

namespace {

// NvCertificateRead: one certificate NV index as read: the certificate with its NV quirks, or
// why the index holds none.
struct NvCertificateRead {
  wire::NvCertificate cert;
  absl::Status error;
};

// ReadNvCertificate reads NV `index` and extracts its DER certificate (wire::ExtractNvCertificate).
// NotFound (no such index) and Unavailable (the TPM stopped answering) are returned as the status;
// any other failure goes into `error`, naming the index and `what`.
absl::StatusOr<NvCertificateRead> ReadNvCertificate(Tpm& tpm, uint32_t index,
                                                    absl::string_view what) {
  absl::StatusOr<Bytes> nv = tpm.NvRead(index);
  if (absl::IsNotFound(nv.status()) || absl::IsUnavailable(nv.status())) {
    return nv.status();
  }
  NvCertificateRead r;
  if (!nv.ok()) {
    r.error = nv.status();
    return r;
  }
  r.cert.nv_size = nv->size();
  absl::StatusOr<wire::NvCertificate> cert = wire::ExtractNvCertificate(*nv);
  if (!cert.ok()) {
    r.error = absl::Status(cert.status().code(),
                           absl::StrCat("NV ", FormatHandle(index), " (", what,
                                        ") exists but holds no DER certificate: ",
                                        cert.status().message()));
    return r;
  }
  r.cert = std::move(*cert);
  return r;
}

}  // namespace

absl::StatusOr<std::vector<EkCertificate>> Tpm::ReadEkCertificates() {
  std::vector<EkCertificate> out;
  for (const wire::EkSpec& spec : wire::AllEkSpecs()) {
    absl::StatusOr<NvCertificateRead> r =
        ReadNvCertificate(*this, spec.cert_nv_index, absl::StrCat(spec.name, " EK certificate"));
    if (absl::IsNotFound(r.status())) {
      continue;
    }
    RETURN_IF_ERROR(r.status());
    EkCertificate c{spec.type, spec.name, spec.cert_nv_index, std::move(r->cert.der)};
    c.nv_size = r->cert.nv_size;
    c.tcg_wrapper = r->cert.tcg_wrapper;
    c.padding_bytes = r->cert.padding_bytes;
    c.trailing_bytes = r->cert.trailing_bytes;
    c.quirks = std::move(r->cert.quirks);
    c.error = std::move(r->error);
    out.push_back(std::move(c));
  }
  return out;
}

absl::StatusOr<std::vector<NvChainCertificate>> Tpm::ReadEkChainCertificates() {
  ASSIGN_OR_RETURN(std::vector<uint32_t> indices,
                   ListNvIndices(kEkChainNvFirst, kEkChainNvLast));
  std::vector<NvChainCertificate> out;
  for (uint32_t index : indices) {
    absl::StatusOr<NvCertificateRead> r = ReadNvCertificate(*this, index, "EK certificate chain");
    if (absl::IsUnavailable(r.status())) {
      return r.status();
    }
    NvChainCertificate c{index, {}, {}, absl::OkStatus()};
    if (!r.ok()) {
      c.error = r.status();  // listed but gone meanwhile
    } else {
      c.der = std::move(r->cert.der);
      c.quirks = std::move(r->cert.quirks);
      c.error = std::move(r->error);
    }
    out.push_back(std::move(c));
  }
  return out;
}

absl::StatusOr<std::vector<uint32_t>> Tpm::ListNvIndices(uint32_t first, uint32_t last) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  std::vector<uint32_t> out;
  uint32_t next = first;
  while (next <= last) {
    TPMS_CAPABILITY_DATA* raw = nullptr;
    TPMI_YES_NO more = TPM2_NO;
    ++commands_;
    TSS2_RC rc = Esys_GetCapability(impl_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                    TPM2_CAP_HANDLES, next, TPM2_MAX_CAP_HANDLES, &more, &raw);
    EsysPtr<TPMS_CAPABILITY_DATA> data(raw);
    RETURN_IF_ERROR(TssError(rc, "TPM2_GetCapability(HANDLES)",
                             absl::StrCat("NV indices from ", FormatHandle(next))));
    const uint32_t count = std::min<uint32_t>(data->data.handles.count, TPM2_MAX_CAP_HANDLES);
    bool past_last = false;
    size_t added = 0;
    for (uint32_t i = 0; i < count; ++i) {
      const uint32_t h = data->data.handles.handle[i];
      if (h < next) {
        continue;
      }
      if (h > last || (h >> 24) != (first >> 24)) {
        past_last = true;
        break;
      }
      out.push_back(h);
      ++added;
    }
    if (past_last || more != TPM2_YES || added == 0 || out.back() == last) {
      break;
    }
    next = out.back() + 1;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Primaries, EK, SRK

absl::StatusOr<TpmObject> Tpm::CreatePrimaryLocked(uint32_t hierarchy, const TPM2B_PUBLIC& tmpl,
                                                   TPM2B_PUBLIC* out_pub,
                                                   const std::string& label) {
  TPM2B_SENSITIVE_CREATE sensitive = {};
  TPM2B_DATA outside = {};
  TPML_PCR_SELECTION creation_pcr = {};
  ESYS_TR handle = ESYS_TR_NONE;
  TPM2B_PUBLIC* pub_raw = nullptr;
  TPM2B_CREATION_DATA* cd_raw = nullptr;
  TPM2B_DIGEST* ch_raw = nullptr;
  TPMT_TK_CREATION* tk_raw = nullptr;
  ++commands_;
  TSS2_RC rc = Esys_CreatePrimary(impl_->esys, hierarchy, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                  ESYS_TR_NONE, &sensitive, &tmpl, &outside, &creation_pcr,
                                  &handle, &pub_raw, &cd_raw, &ch_raw, &tk_raw);
  EsysPtr<TPM2B_PUBLIC> pub(pub_raw);
  EsysPtr<TPM2B_CREATION_DATA> cd(cd_raw);
  EsysPtr<TPM2B_DIGEST> ch(ch_raw);
  EsysPtr<TPMT_TK_CREATION> tk(tk_raw);
  RETURN_IF_ERROR(TssError(rc, "TPM2_CreatePrimary", label));
  TpmObject obj(this, handle, TpmObject::Kind::kTransient, label);
  if (out_pub != nullptr) {
    *out_pub = *pub;
  }
  return obj;
}

absl::StatusOr<TpmObject> Tpm::FromPersistentLocked(uint32_t handle, TPM2B_PUBLIC* out_pub) {
  const std::string label = absl::StrCat("persistent handle ", FormatHandle(handle));
  if ((handle >> 24) != TPM2_HT_PERSISTENT) {
    return absl::InvalidArgumentError(
        absl::StrCat(FormatHandle(handle), " is not a persistent handle (0x81xxxxxx)"));
  }
  ESYS_TR tr = ESYS_TR_NONE;
  ++commands_;
  TSS2_RC rc = Esys_TR_FromTPMPublic(impl_->esys, handle, ESYS_TR_NONE, ESYS_TR_NONE,
                                     ESYS_TR_NONE, &tr);
  RETURN_IF_ERROR(TssError(rc, "TPM2_ReadPublic", label));
  TpmObject obj(this, tr, TpmObject::Kind::kPersistent, label);
  if (out_pub != nullptr) {
    TPM2B_PUBLIC* pub_raw = nullptr;
    TPM2B_NAME* name_raw = nullptr;
    TPM2B_NAME* qn_raw = nullptr;
    ++commands_;
    rc = Esys_ReadPublic(impl_->esys, tr, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub_raw,
                         &name_raw, &qn_raw);
    EsysPtr<TPM2B_PUBLIC> pub(pub_raw);
    EsysPtr<TPM2B_NAME> name(name_raw);
    EsysPtr<TPM2B_NAME> qn(qn_raw);
    RETURN_IF_ERROR(TssError(rc, "TPM2_ReadPublic", label));
    *out_pub = *pub;
  }
  return obj;
}

absl::StatusOr<TPM2B_PUBLIC> Tpm::ReadPublic(uint32_t persistent_handle) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  TPM2B_PUBLIC pub = {};
  ASSIGN_OR_RETURN(TpmObject obj, FromPersistentLocked(persistent_handle, &pub));
  return pub;
}

absl::StatusOr<Ek> Tpm::LoadEk(wire::EkType type, bool allow_persistent) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  const wire::EkSpec* spec = nullptr;
  for (const wire::EkSpec& s : wire::AllEkSpecs()) {
    if (s.type == type) {
      spec = &s;
    }
  }
  if (spec == nullptr) {
    return absl::InvalidArgumentError("unknown EK type");
  }
  const TPM2B_PUBLIC tmpl = wire::EkTemplate(type);
  if (allow_persistent && spec->persistent_handle != 0) {
    TPM2B_PUBLIC pub = {};
    absl::StatusOr<TpmObject> obj = FromPersistentLocked(spec->persistent_handle, &pub);
    if (obj.ok() && SameShape(pub.publicArea, tmpl.publicArea)) {
      return Ek{std::move(*obj), pub, type, spec->persistent_handle};
    }
    if (!obj.ok() && !absl::IsNotFound(obj.status())) {
      return obj.status();
    }
    // Absent, or a persistent object that is not the TCG default EK: derive it instead.
  }
  TPM2B_PUBLIC pub = {};
  ASSIGN_OR_RETURN(TpmObject obj,
                   CreatePrimaryLocked(ESYS_TR_RH_ENDORSEMENT, tmpl, &pub,
                                       absl::StrCat("EK ", spec->name, " (endorsement hierarchy)")));
  return Ek{std::move(obj), pub, type, 0};
}

absl::StatusOr<LoadedKey> Tpm::LoadSrkLocked(bool allow_persistent) {
  const TPM2B_PUBLIC tmpl = wire::SrkTemplateEcc();
  if (allow_persistent) {
    TPM2B_PUBLIC pub = {};
    absl::StatusOr<TpmObject> obj = FromPersistentLocked(kSrkHandle, &pub);
    if (obj.ok() && SameShape(pub.publicArea, tmpl.publicArea)) {
      return LoadedKey{std::move(*obj), pub, kSrkHandle, {}, std::nullopt};
    }
    if (!obj.ok() && !absl::IsNotFound(obj.status())) {
      return obj.status();
    }
  }
  TPM2B_PUBLIC pub = {};
  ASSIGN_OR_RETURN(TpmObject obj, CreatePrimaryLocked(ESYS_TR_RH_OWNER, tmpl, &pub,
                                                      "SRK (owner hierarchy, ECC P-256)"));
  return LoadedKey{std::move(obj), pub, 0, {}, std::nullopt};
}

absl::StatusOr<LoadedKey> Tpm::LoadSrk(bool allow_persistent) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return LoadSrkLocked(allow_persistent);
}

// ---------------------------------------------------------------------------------------------
// Keys

absl::Status Tpm::CreateLocked(uint32_t parent, const TPM2B_PUBLIC& tmpl, ByteSpan auth,
                               const std::string& label, TPM2B_PRIVATE* out_priv,
                               TPM2B_PUBLIC* out_pub) {
  if (auth.size() > sizeof(TPMU_HA)) {
    return absl::InvalidArgumentError(
        absl::StrCat("auth value is ", auth.size(), " bytes; the TPM allows at most ", sizeof(TPMU_HA)));
  }
  TPM2B_SENSITIVE_CREATE sensitive = {};
  sensitive.sensitive.userAuth.size = static_cast<UINT16>(auth.size());
  if (!auth.empty()) {
    std::memcpy(sensitive.sensitive.userAuth.buffer, auth.data(), auth.size());
  }
  TPM2B_DATA outside = {};
  TPML_PCR_SELECTION creation_pcr = {};
  TPM2B_PRIVATE* priv_raw = nullptr;
  TPM2B_PUBLIC* pub_raw = nullptr;
  TPM2B_CREATION_DATA* cd_raw = nullptr;
  TPM2B_DIGEST* ch_raw = nullptr;
  TPMT_TK_CREATION* tk_raw = nullptr;
  ++commands_;
  TSS2_RC rc = Esys_Create(impl_->esys, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                           &sensitive, &tmpl, &outside, &creation_pcr, &priv_raw, &pub_raw,
                           &cd_raw, &ch_raw, &tk_raw);
  OPENSSL_cleanse(&sensitive, sizeof(sensitive));
  EsysPtr<TPM2B_PRIVATE> priv(priv_raw);
  EsysPtr<TPM2B_PUBLIC> pub(pub_raw);
  EsysPtr<TPM2B_CREATION_DATA> cd(cd_raw);
  EsysPtr<TPM2B_DIGEST> ch(ch_raw);
  EsysPtr<TPMT_TK_CREATION> tk(tk_raw);
  RETURN_IF_ERROR(TssError(rc, "TPM2_Create", label));
  *out_priv = *priv;
  *out_pub = *pub;
  return absl::OkStatus();
}

absl::StatusOr<wire::TpmKeyFile> Tpm::CreateKey(wire::KeyAlg alg, ByteSpan auth) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  ASSIGN_OR_RETURN(LoadedKey srk, LoadSrkLocked(true));
  TPM2B_PRIVATE priv = {};
  TPM2B_PUBLIC pub = {};
  RETURN_IF_ERROR(CreateLocked(srk.object.tr(), wire::SigningKeyTemplate(alg), auth,
                               absl::StrCat(wire::KeyAlgName(alg), " signing key"), &priv, &pub));
  wire::TpmKeyFile key;
  key.parent = TPM2_RH_OWNER;
  key.empty_auth = auth.empty();
  ASSIGN_OR_RETURN(key.pub, wire::MarshalPublic(pub));
  ASSIGN_OR_RETURN(key.priv, wire::MarshalPrivate(priv));
  return key;
}

absl::Status Tpm::SetAuthLocked(uint32_t tr, ByteSpan auth) {
  if (auth.empty()) {
    return absl::OkStatus();
  }
  TPM2B_AUTH a = {};
  a.size = static_cast<UINT16>(auth.size());
  std::memcpy(a.buffer, auth.data(), auth.size());
  TSS2_RC rc = Esys_TR_SetAuth(impl_->esys, tr, &a);
  OPENSSL_cleanse(&a, sizeof(a));
  return TssError(rc, "Esys_TR_SetAuth", "signing key");
}

absl::StatusOr<LoadedKey> Tpm::LoadParentLocked(const wire::TpmKeyFile& key) {
  LoadedKey parent;
  if (key.parent == TPM2_RH_OWNER || key.parent == 0) {
    if (!key.rsa_parent) {
      return LoadSrkLocked(true);
    }
    TPM2B_PUBLIC ppub = {};
    ASSIGN_OR_RETURN(parent.object, CreatePrimaryLocked(ESYS_TR_RH_OWNER, wire::SrkTemplateRsa(),
                                                        &ppub, "SRK (owner hierarchy, RSA-2048)"));
    parent.pub = ppub;
    return parent;
  }
  if ((key.parent >> 24) == TPM2_HT_PERSISTENT) {
    TPM2B_PUBLIC ppub = {};
    ASSIGN_OR_RETURN(parent.object, FromPersistentLocked(key.parent, &ppub));
    parent.pub = ppub;
    return parent;
  }
  return absl::UnimplementedError(absl::StrCat(
      "key parent ", FormatHandle(key.parent),
      " is not supported (expected the owner hierarchy 0x40000001 or a persistent handle)"));
}

absl::StatusOr<LoadedKey> Tpm::LoadKeyUnderLocked(const LoadedKey& parent,
                                                  const wire::TpmKeyFile& key, ByteSpan auth) {
  ASSIGN_OR_RETURN(TPM2B_PUBLIC pub, wire::ParsePublic(key.pub));
  ASSIGN_OR_RETURN(TPM2B_PRIVATE priv, wire::ParsePrivate(key.priv));
  // A key may have an empty password even if the file does not say so: `auth` may be empty.
  if (auth.size() > sizeof(TPMU_HA)) {
    return absl::InvalidArgumentError("auth value too long");
  }
  ESYS_TR handle = ESYS_TR_NONE;
  ++commands_;
  TSS2_RC rc = Esys_Load(impl_->esys, parent.object.tr(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                         ESYS_TR_NONE, &priv, &pub, &handle);
  RETURN_IF_ERROR(
      TssError(rc, "TPM2_Load", absl::StrCat("key under parent ", FormatHandle(key.parent))));
  LoadedKey out;
  out.object = TpmObject(this, handle, TpmObject::Kind::kTransient, "signing key");
  out.pub = pub;
  out.auth.assign(auth.begin(), auth.end());
  out.blob = key;
  RETURN_IF_ERROR(SetAuthLocked(handle, auth));
  return out;
}

absl::Status CheckPersistentKeyFile(const wire::TpmKeyFile& file, const TPM2B_PUBLIC& actual) {
  const uint32_t h = file.persistent_handle.value_or(0);
  ASSIGN_OR_RETURN(TPM2B_PUBLIC want, wire::ParsePublic(file.pub));
  auto a = wire::MarshalTpmtPublic(actual.publicArea);
  auto w = wire::MarshalTpmtPublic(want.publicArea);
  if (!a.ok() || !w.ok() || *a != *w) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the persistent handle ", FormatHandle(h), " holds another key than the key file names "
        "(public areas differ): the handle was evicted and reused; write the key file again "
        "(`hwid key file --persistent ", FormatHandle(h), "`) or use the right handle"));
  }
  return absl::OkStatus();
}

absl::StatusOr<LoadedKey> Tpm::LoadKeyLocked(const wire::TpmKeyFile& key, ByteSpan auth) {
  if (key.persistent_handle.has_value()) {
    const uint32_t h = *key.persistent_handle;
    TPM2B_PUBLIC pub = {};
    ASSIGN_OR_RETURN(TpmObject obj, FromPersistentLocked(h, &pub));
    RETURN_IF_ERROR(CheckPersistentKeyFile(key, pub));
    if (auth.size() > sizeof(TPMU_HA)) {
      return absl::InvalidArgumentError("auth value too long");
    }
    RETURN_IF_ERROR(SetAuthLocked(obj.tr(), auth));
    return LoadedKey{std::move(obj), pub, h, SecureBytes(auth.begin(), auth.end()), std::nullopt};
  }
  ASSIGN_OR_RETURN(LoadedKey parent, LoadParentLocked(key));
  return LoadKeyUnderLocked(parent, key, auth);
}

absl::StatusOr<LoadedKey> Tpm::LoadKey(const wire::TpmKeyFile& key, ByteSpan auth) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return LoadKeyLocked(key, auth);
}

absl::StatusOr<LoadedKey> Tpm::LoadPersistentKey(uint32_t handle, ByteSpan auth) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  TPM2B_PUBLIC pub = {};
  ASSIGN_OR_RETURN(TpmObject obj, FromPersistentLocked(handle, &pub));
  LoadedKey out{std::move(obj), pub, handle, SecureBytes(auth.begin(), auth.end()), std::nullopt};
  if (!auth.empty()) {
    if (auth.size() > sizeof(TPMU_HA)) {
      return absl::InvalidArgumentError("auth value too long");
    }
    TPM2B_AUTH a = {};
    a.size = static_cast<UINT16>(auth.size());
    std::memcpy(a.buffer, auth.data(), auth.size());
    TSS2_RC rc = Esys_TR_SetAuth(impl_->esys, out.object.tr(), &a);
    OPENSSL_cleanse(&a, sizeof(a));
    RETURN_IF_ERROR(TssError(rc, "Esys_TR_SetAuth", FormatHandle(handle)));
  }
  return out;
}

absl::Status Tpm::Persist(LoadedKey& key, uint32_t handle) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if ((handle >> 24) != TPM2_HT_PERSISTENT) {
    return absl::InvalidArgumentError(
        absl::StrCat(FormatHandle(handle), " is not a persistent handle (0x81xxxxxx)"));
  }
  if (key.object.kind() != TpmObject::Kind::kTransient) {
    return absl::FailedPreconditionError("only a transient key can be persisted");
  }
  ESYS_TR out = ESYS_TR_NONE;
  ++commands_;
  TSS2_RC rc = Esys_EvictControl(impl_->esys, ESYS_TR_RH_OWNER, key.object.tr(), ESYS_TR_PASSWORD,
                                 ESYS_TR_NONE, ESYS_TR_NONE, handle, &out);
  RETURN_IF_ERROR(TssError(rc, "TPM2_EvictControl", absl::StrCat("persistent handle ", FormatHandle(handle))));
  key.object = TpmObject(this, out, TpmObject::Kind::kPersistent,
                         absl::StrCat("persistent handle ", FormatHandle(handle)));
  key.persistent_handle = handle;
  if (!key.auth.empty()) {
    TPM2B_AUTH a = {};
    a.size = static_cast<UINT16>(key.auth.size());
    std::memcpy(a.buffer, key.auth.data(), key.auth.size());
    rc = Esys_TR_SetAuth(impl_->esys, out, &a);
    OPENSSL_cleanse(&a, sizeof(a));
    RETURN_IF_ERROR(TssError(rc, "Esys_TR_SetAuth", FormatHandle(handle)));
  }
  return absl::OkStatus();
}

absl::Status Tpm::EvictPersistent(uint32_t persistent_handle) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  ASSIGN_OR_RETURN(TpmObject obj, FromPersistentLocked(persistent_handle, nullptr));
  ESYS_TR out = ESYS_TR_NONE;
  ++commands_;
  TSS2_RC rc = Esys_EvictControl(impl_->esys, ESYS_TR_RH_OWNER, obj.tr(), ESYS_TR_PASSWORD,
                                 ESYS_TR_NONE, ESYS_TR_NONE, persistent_handle, &out);
  RETURN_IF_ERROR(TssError(rc, "TPM2_EvictControl (remove)",
                           absl::StrCat("persistent handle ", FormatHandle(persistent_handle))));
  // ESAPI invalidates the evicted object's ESYS_TR itself.
  obj.Release();
  return absl::OkStatus();
}

absl::StatusOr<LoadedKey> Tpm::EnsureAk(wire::KeyAlg alg, uint32_t handle) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  const TPM2B_PUBLIC tmpl = wire::AkTemplate(alg);
  TPM2B_PUBLIC pub = {};
  absl::StatusOr<TpmObject> existing = FromPersistentLocked(handle, &pub);
  if (existing.ok()) {
    absl::Status attrs = wire::CheckAkAttributes(pub.publicArea);
    if (!attrs.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the object at ", FormatHandle(handle), " is not usable as an attestation key: ",
          attrs.message(), "; evict it or choose another handle"));
    }
    if (!SameKeyAlg(pub.publicArea, tmpl.publicArea)) {
      return absl::FailedPreconditionError(
          absl::StrCat("the attestation key at ", FormatHandle(handle), " is not ",
                       wire::KeyAlgName(alg), "; evict it or choose another handle"));
    }
    return LoadedKey{std::move(*existing), pub, handle, {}, std::nullopt};
  }
  if (!absl::IsNotFound(existing.status())) {
    return existing.status();
  }
  ASSIGN_OR_RETURN(LoadedKey srk, LoadSrkLocked(true));
  TPM2B_PRIVATE priv = {};
  TPM2B_PUBLIC apub = {};
  RETURN_IF_ERROR(CreateLocked(srk.object.tr(), tmpl, {},
                               absl::StrCat(wire::KeyAlgName(alg), " attestation key"), &priv, &apub));
  ESYS_TR loaded = ESYS_TR_NONE;
  ++commands_;
  TSS2_RC rc = Esys_Load(impl_->esys, srk.object.tr(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                         ESYS_TR_NONE, &priv, &apub, &loaded);
  RETURN_IF_ERROR(TssError(rc, "TPM2_Load", "attestation key"));
  srk.object.Reset();  // free the slot before EvictControl
  LoadedKey ak{TpmObject(this, loaded, TpmObject::Kind::kTransient, "attestation key"), apub, 0,
               {}, std::nullopt};
  RETURN_IF_ERROR(Persist(ak, handle));
  return ak;
}

// ---------------------------------------------------------------------------------------------
// PCRs and quotes

absl::StatusOr<wire::PcrValues> Tpm::PcrReadLocked(const TPML_PCR_SELECTION& selection) {
  wire::PcrValues out;
  TPML_PCR_SELECTION remaining = selection;
  auto empty = [](const TPML_PCR_SELECTION& s) {
    for (uint32_t i = 0; i < s.count; ++i) {
      for (uint32_t b = 0; b < s.pcrSelections[i].sizeofSelect; ++b) {
        if (s.pcrSelections[i].pcrSelect[b] != 0) {
          return false;
        }
      }
    }
    return true;
  };
  for (int guard = 0; guard < 64 && !empty(remaining); ++guard) {
    UINT32 counter = 0;
    TPML_PCR_SELECTION* sel_raw = nullptr;
    TPML_DIGEST* val_raw = nullptr;
    ++commands_;
    TSS2_RC rc = Esys_PCR_Read(impl_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &remaining,
                               &counter, &sel_raw, &val_raw);
    EsysPtr<TPML_PCR_SELECTION> sel_out(sel_raw);
    EsysPtr<TPML_DIGEST> values(val_raw);
    RETURN_IF_ERROR(TssError(rc, "TPM2_PCR_Read", wire::FormatPcrSelection(remaining)));
    auto read = wire::SelectedPcrs(*sel_out);
    if (read.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PCRs ", wire::FormatPcrSelection(remaining),
          " are not allocated in this TPM (check `hwid tpm info` for its PCR banks)"));
    }
    if (read.size() != values->count) {
      return absl::InternalError("TPM2_PCR_Read returned a value count that does not match its selection");
    }
    for (size_t i = 0; i < read.size(); ++i) {
      const auto& [alg, index] = read[i];
      out[alg][index] = Bytes(values->digests[i].buffer, values->digests[i].buffer + values->digests[i].size);
      for (uint32_t b = 0; b < remaining.count; ++b) {
        if (remaining.pcrSelections[b].hash == alg) {
          remaining.pcrSelections[b].pcrSelect[index / 8] &= static_cast<uint8_t>(~(1u << (index % 8)));
        }
      }
    }
  }
  return out;
}

absl::StatusOr<wire::PcrValues> Tpm::PcrRead(const TPML_PCR_SELECTION& selection) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return PcrReadLocked(selection);
}

absl::StatusOr<Quote> Tpm::QuotePcrs(LoadedKey& ak, ByteSpan nonce,
                                     const TPML_PCR_SELECTION& selection) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (nonce.size() > sizeof(TPMU_HA)) {
    return absl::InvalidArgumentError(
        absl::StrCat("quote nonce is ", nonce.size(), " bytes; at most ", sizeof(TPMU_HA), " allowed"));
  }
  TPM2B_DATA qualifying = {};
  qualifying.size = static_cast<UINT16>(nonce.size());
  if (!nonce.empty()) {
    std::memcpy(qualifying.buffer, nonce.data(), nonce.size());
  }
  TPMT_SIG_SCHEME scheme = {};
  scheme.scheme = TPM2_ALG_NULL;
  absl::Status last = absl::OkStatus();
  for (int attempt = 0; attempt < 3; ++attempt) {
    ASSIGN_OR_RETURN(wire::PcrValues pcrs, PcrReadLocked(selection));
    TPM2B_ATTEST* attest_raw = nullptr;
    TPMT_SIGNATURE* sig_raw = nullptr;
    ++commands_;
    TSS2_RC rc = Esys_Quote(impl_->esys, ak.object.tr(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                            ESYS_TR_NONE, &qualifying, &scheme, &selection, &attest_raw, &sig_raw);
    EsysPtr<TPM2B_ATTEST> attest(attest_raw);
    EsysPtr<TPMT_SIGNATURE> sig(sig_raw);
    RETURN_IF_ERROR(TssError(rc, "TPM2_Quote", ak.object.label()));
    Quote q;
    q.attest.assign(attest->attestationData, attest->attestationData + attest->size);
    ASSIGN_OR_RETURN(q.signature, wire::MarshalSignature(*sig));
    q.pcrs = std::move(pcrs);
    // Self-check: a PCR extended between the read and the quote makes the digest disagree.
    absl::StatusOr<wire::VerifiedQuote> v =
        wire::VerifyQuote(ak.pub.publicArea, q.attest, q.signature, nonce, q.pcrs);
    if (v.ok()) {
      return q;
    }
    last = v.status();
  }
  return absl::InternalError(
      absl::StrCat("TPM2_Quote: the quote does not verify against the PCR values read: ", last.message()));
}

absl::StatusOr<Certification> Tpm::CertifyLoadedLocked(LoadedKey& ak, LoadedKey& key,
                                                       const wire::TpmKeyFile& key_file,
                                                       ByteSpan qualifying) {
  if (qualifying.size() > sizeof(TPMU_HA)) {
    return absl::InvalidArgumentError(absl::StrCat("certify qualifying data is ",
                                                   qualifying.size(), " bytes; at most ",
                                                   sizeof(TPMU_HA), " allowed"));
  }
  TPM2B_DATA q = {};
  q.size = static_cast<UINT16>(qualifying.size());
  if (!qualifying.empty()) {
    std::memcpy(q.buffer, qualifying.data(), qualifying.size());
  }
  TPMT_SIG_SCHEME scheme = {};
  scheme.scheme = TPM2_ALG_NULL;  // the AK's own scheme
  TPM2B_ATTEST* attest_raw = nullptr;
  TPMT_SIGNATURE* sig_raw = nullptr;
  ++commands_;
  TSS2_RC rc = Esys_Certify(impl_->esys, key.object.tr(), ak.object.tr(), ESYS_TR_PASSWORD,
                            ESYS_TR_PASSWORD, ESYS_TR_NONE, &q, &scheme, &attest_raw, &sig_raw);
  EsysPtr<TPM2B_ATTEST> attest(attest_raw);
  EsysPtr<TPMT_SIGNATURE> sig(sig_raw);
  RETURN_IF_ERROR(TssError(rc, "TPM2_Certify", "KeyManager key (signed by the AK)"));
  Certification out;
  out.attest.assign(attest->attestationData, attest->attestationData + attest->size);
  ASSIGN_OR_RETURN(out.signature, wire::MarshalSignature(*sig));
  absl::StatusOr<wire::VerifiedCertify> v =
      wire::VerifyCertify(ak.pub.publicArea, key_file.pub, out.attest, out.signature, qualifying);
  if (!v.ok()) {
    return absl::InternalError(
        absl::StrCat("TPM2_Certify: the certification does not verify: ", v.status().message()));
  }
  return out;
}

absl::StatusOr<Certification> Tpm::Certify(LoadedKey& ak, const wire::TpmKeyFile& key_file,
                                           ByteSpan qualifying) {
  return std::move(CertifyAll(ak, {key_file}, qualifying).front());
}

std::vector<absl::StatusOr<Certification>> Tpm::CertifyAll(
    LoadedKey& ak, const std::vector<wire::TpmKeyFile>& key_files, ByteSpan qualifying) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  std::vector<absl::StatusOr<Certification>> out;
  std::optional<absl::StatusOr<LoadedKey>> srk;  // the owner-hierarchy SRK, loaded once
  for (const wire::TpmKeyFile& kf : key_files) {
    const bool under_srk = (kf.parent == TPM2_RH_OWNER || kf.parent == 0) && !kf.rsa_parent;
    std::optional<absl::StatusOr<LoadedKey>> own_parent;
    if (under_srk && !srk.has_value()) {
      srk = LoadParentLocked(kf);
    } else if (!under_srk) {
      own_parent = LoadParentLocked(kf);
    }
    const absl::StatusOr<LoadedKey>& parent = under_srk ? *srk : *own_parent;
    if (!parent.ok()) {
      out.push_back(parent.status());
      continue;
    }
    absl::StatusOr<LoadedKey> key = LoadKeyUnderLocked(*parent, kf, {});
    out.push_back(key.ok() ? CertifyLoadedLocked(ak, *key, kf, qualifying)
                           : absl::StatusOr<Certification>(key.status()));
  }
  return out;
}

absl::StatusOr<SecureBytes> Tpm::ActivateCredential(LoadedKey& ak, Ek& ek, ByteSpan id_object,
                                                    ByteSpan encrypted_secret) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  ASSIGN_OR_RETURN(TPM2B_ID_OBJECT blob, wire::ParseIdObject(id_object));
  ASSIGN_OR_RETURN(TPM2B_ENCRYPTED_SECRET secret, wire::ParseEncryptedSecret(encrypted_secret));
  const wire::EkPolicy policy = wire::EkPolicyFor(ek.type);
  TPMT_SYM_DEF sym = {};
  sym.algorithm = TPM2_ALG_NULL;
  ESYS_TR session = ESYS_TR_NONE;
  ++commands_;
  TSS2_RC rc = Esys_StartAuthSession(impl_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                     ESYS_TR_NONE, ESYS_TR_NONE, nullptr, TPM2_SE_POLICY, &sym,
                                     policy.name_alg, &session);
  RETURN_IF_ERROR(TssError(rc, "TPM2_StartAuthSession", "EK policy session"));
  TpmObject session_obj(this, session, TpmObject::Kind::kSession, "EK policy session");
  TPM2B_TIMEOUT* timeout_raw = nullptr;
  TPMT_TK_AUTH* ticket_raw = nullptr;
  ++commands_;
  rc = Esys_PolicySecret(impl_->esys, ESYS_TR_RH_ENDORSEMENT, session, ESYS_TR_PASSWORD,
                         ESYS_TR_NONE, ESYS_TR_NONE, nullptr, nullptr, nullptr, 0, &timeout_raw,
                         &ticket_raw);
  EsysPtr<TPM2B_TIMEOUT> timeout(timeout_raw);
  EsysPtr<TPMT_TK_AUTH> ticket(ticket_raw);
  RETURN_IF_ERROR(TssError(rc, "TPM2_PolicySecret", "endorsement hierarchy (EK policy)"));
  if (policy.needs_policy_or) {
    TPML_DIGEST list = {};
    if (policy.or_branches.size() > 8) {
      return absl::InternalError("EK policy has more than 8 PolicyOR branches");
    }
    list.count = static_cast<UINT32>(policy.or_branches.size());
    for (size_t i = 0; i < policy.or_branches.size(); ++i) {
      list.digests[i].size = static_cast<UINT16>(policy.or_branches[i].size());
      std::memcpy(list.digests[i].buffer, policy.or_branches[i].data(), policy.or_branches[i].size());
    }
    ++commands_;
    rc = Esys_PolicyOR(impl_->esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &list);
    RETURN_IF_ERROR(TssError(rc, "TPM2_PolicyOR", "EK policy session"));
  }
  TPM2B_DIGEST* cert_raw = nullptr;
  ++commands_;
  rc = Esys_ActivateCredential(impl_->esys, ak.object.tr(), ek.object.tr(), ESYS_TR_PASSWORD,
                               session, ESYS_TR_NONE, &blob, &secret, &cert_raw);
  EsysPtr<TPM2B_DIGEST> cert(cert_raw);
  RETURN_IF_ERROR(TssError(rc, "TPM2_ActivateCredential",
                           absl::StrCat(ak.object.label(), " under ", ek.object.label())));
  SecureBytes out(cert->buffer, cert->buffer + cert->size);
  CleanseAndFree(cert);
  return out;
}

absl::Status Tpm::AuthFailureLocked(TSS2_RC rc, absl::string_view operation,
                                     absl::string_view object) {
  absl::Status st = TssError(rc, operation, object);
  if (TpmRcBase(rc) != TPM2_RC_LOCKOUT) {
    return st;
  }
  absl::StatusOr<TpmInfo> info = GetInfo();
  if (!info.ok()) {
    return absl::FailedPreconditionError(st.message());
  }
  std::string when;
  if (info->lockout_interval == 0) {
    when = "the TPM forgives no failure by itself (lockout interval 0): only a reset with "
           "lockout authorization ends it";
  } else {
    when = absl::StrFormat(
        "one failure is forgiven every %u s, so the key can be tried again in about %u s (after "
        "more wrong tries, longer)",
        info->lockout_interval, info->lockout_interval);
  }
  return absl::FailedPreconditionError(absl::StrFormat(
      "%s; the TPM is in dictionary-attack lockout: %u failed authorizations of %u allowed; %s; "
      "or reset the counter now with lockout authorization (`tpm2_dictionarylockout -c`); "
      "then check the key's authorization value (a wrong one caused the lockout)",
      st.message(), info->lockout_counter, info->max_auth_fail, when));
}

TSS2_RC Tpm::SignLocked(uint32_t tr, ByteSpan digest, SignScheme scheme, TPMI_ALG_HASH hash,
                        TPMT_SIGNATURE* out) {
  TPM2B_DIGEST d = {};
  d.size = static_cast<UINT16>(digest.size());
  std::memcpy(d.buffer, digest.data(), digest.size());
  TPMT_SIG_SCHEME s = {};
  switch (scheme) {
    case SignScheme::kEcdsa:
      s.scheme = TPM2_ALG_ECDSA;
      break;
    case SignScheme::kRsaPkcs1:
      s.scheme = TPM2_ALG_RSASSA;
      break;
    case SignScheme::kRsaPss:
      s.scheme = TPM2_ALG_RSAPSS;
      break;
  }
  s.details.any.hashAlg = hash;
  TPMT_TK_HASHCHECK validation = {};
  validation.tag = TPM2_ST_HASHCHECK;
  validation.hierarchy = TPM2_RH_NULL;
  TPMT_SIGNATURE* sig_raw = nullptr;
  ++commands_;
  TSS2_RC rc = Esys_Sign(impl_->esys, tr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &d, &s,
                         &validation, &sig_raw);
  EsysPtr<TPMT_SIGNATURE> sig(sig_raw);
  if (rc == TSS2_RC_SUCCESS) {
    *out = *sig;
  }
  return rc;
}

namespace {

absl::Status CheckDigestSize(ByteSpan digest) {
  if (digest.empty() || digest.size() > sizeof(TPMU_HA)) {
    return absl::InvalidArgumentError(
        absl::StrCat("digest of ", digest.size(), " bytes cannot be signed"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TPMT_SIGNATURE> Tpm::Sign(LoadedKey& key, ByteSpan digest, SignScheme scheme,
                                         TPMI_ALG_HASH hash) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  RETURN_IF_ERROR(CheckDigestSize(digest));
  for (int attempt = 0; attempt < 2; ++attempt) {
    TPMT_SIGNATURE sig = {};
    TSS2_RC rc = SignLocked(key.object.tr(), digest, scheme, hash, &sig);
    if (rc == TSS2_RC_SUCCESS) {
      return sig;
    }
    if (attempt == 0 && IsHandleGone(rc) && key.blob.has_value() &&
        key.object.kind() == TpmObject::Kind::kTransient) {
      // The TPM lost the transient object (restart, or flushed by someone else): reload it.
      ESYS_TR stale = key.object.Release();
      Esys_TR_Close(impl_->esys, &stale);
      SecureBytes auth = key.auth;
      ASSIGN_OR_RETURN(LoadedKey fresh, LoadKeyLocked(*key.blob, AsSpan(auth)));
      key.object = std::move(fresh.object);
      continue;
    }
    return AuthFailureLocked(rc, "TPM2_Sign", key.object.label());
  }
  return absl::InternalError("TPM2_Sign: unreachable");
}

absl::StatusOr<TpmObject> Tpm::LoadSlotFreeLocked(SlotFreeKey& key, absl::Time deadline,
                                                  const std::function<bool()>& on_busy) {
  absl::Duration backoff = absl::Milliseconds(1);
  while (true) {
    absl::Status st;
    if (key.saved_context.has_value()) {
      ESYS_TR tr = ESYS_TR_NONE;
      ++commands_;
      TSS2_RC rc = Esys_ContextLoad(impl_->esys, &*key.saved_context, &tr);
      if (rc == TSS2_RC_SUCCESS) {
        TpmObject obj(this, tr, TpmObject::Kind::kTransient, "signing key (saved context)");
        RETURN_IF_ERROR(SetAuthLocked(tr, AsSpan(key.auth)));
        return obj;
      }
      st = TssError(rc, "TPM2_ContextLoad", "signing key (saved context)");
      if (!absl::IsResourceExhausted(st) && !absl::IsUnavailable(st)) {
        // The TPM no longer accepts the context (restarted: new context keys or sequence):
        // load the key from its blob instead.
        key.saved_context.reset();
        continue;
      }
    } else {
      absl::StatusOr<LoadedKey> loaded = LoadKeyLocked(key.blob, AsSpan(key.auth));
      if (loaded.ok()) {
        ++key.reloads;
        TPMS_CONTEXT* ctx_raw = nullptr;
        ++commands_;
        TSS2_RC rc = Esys_ContextSave(impl_->esys, loaded->object.tr(), &ctx_raw);
        EsysPtr<TPMS_CONTEXT> ctx(ctx_raw);
        if (rc == TSS2_RC_SUCCESS) {
          key.saved_context = *ctx;
        }
        return std::move(loaded->object);
      }
      st = loaded.status();
    }
    if (absl::IsResourceExhausted(st) && on_busy && on_busy()) {
      continue;  // the caller freed objects of its own: retry at once
    }
    if (!absl::IsResourceExhausted(st) || absl::Now() + backoff > deadline) {
      if (absl::IsResourceExhausted(st)) {
        return absl::ResourceExhaustedError(absl::StrCat(
            st.message(), " (every TPM object slot stayed busy while this signature waited; "
            "other processes hold them, or processes killed while holding them leaked them: "
            "`hwid tpm info` shows the slots in use, `hwid tpm flush-transient` frees leaked "
            "ones when no other TPM user runs; a resource manager, /dev/tpmrm0 or tpm2-abrmd, "
            "avoids both)"));
      }
      return st;
    }
    // Someone else holds the slots for the moment: wait briefly (with jitter, so waiting
    // processes do not retry in lockstep) and try again.
    mu_.unlock();
    if (wait_hook_) {
      wait_hook_(true);
    }
    absl::SleepFor(backoff + absl::Microseconds(absl::ToInt64Microseconds(backoff) *
                                                 (static_cast<int64_t>(commands_ % 7)) / 7));
    if (wait_hook_) {
      wait_hook_(false);
    }
    mu_.lock();
    backoff = std::min(backoff * 2, absl::Milliseconds(20));
  }
}

absl::StatusOr<LoadedKey> Tpm::LoadSlotFree(SlotFreeKey& key, absl::Duration slot_wait,
                                            const std::function<bool()>& on_busy) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  ASSIGN_OR_RETURN(TpmObject obj, LoadSlotFreeLocked(key, absl::Now() + slot_wait, on_busy));
  return LoadedKey{std::move(obj), key.pub, 0, key.auth, key.blob};
}

absl::StatusOr<TPMT_SIGNATURE> Tpm::SignSlotFree(SlotFreeKey& key, ByteSpan digest,
                                                 SignScheme scheme, TPMI_ALG_HASH hash,
                                                 absl::Duration slot_wait,
                                                 const std::function<bool()>& on_busy) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  RETURN_IF_ERROR(CheckDigestSize(digest));
  const absl::Time deadline = absl::Now() + slot_wait;
  for (int attempt = 0; attempt < 2; ++attempt) {
    ASSIGN_OR_RETURN(TpmObject obj, LoadSlotFreeLocked(key, deadline, on_busy));
    TPMT_SIGNATURE sig = {};
    TSS2_RC rc = SignLocked(obj.tr(), digest, scheme, hash, &sig);
    obj.Reset();  // flush now: the slot is free again before we return
    if (rc == TSS2_RC_SUCCESS) {
      return sig;
    }
    if (attempt == 0 && IsHandleGone(rc)) {
      key.saved_context.reset();  // flushed underneath us between load and sign: reload once
      continue;
    }
    return AuthFailureLocked(rc, "TPM2_Sign", "signing key");
  }
  return absl::InternalError("TPM2_Sign: unreachable");
}

absl::Status Tpm::CheckKeyAlg(wire::KeyAlg alg) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  const TPM2B_PUBLIC tmpl = wire::SigningKeyTemplate(alg);
  TPMT_PUBLIC_PARMS parms = {};
  parms.type = tmpl.publicArea.type;
  parms.parameters = tmpl.publicArea.parameters;
  ++commands_;
  TSS2_RC rc = Esys_TestParms(impl_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &parms);
  if (rc == TSS2_RC_SUCCESS) {
    return absl::OkStatus();
  }
  absl::Status st = TssError(rc, "TPM2_TestParms", absl::StrCat(wire::KeyAlgName(alg), " key"));
  if (absl::IsUnavailable(st)) {
    return st;
  }
  return absl::InvalidArgumentError(absl::StrCat("this TPM cannot make ", wire::KeyAlgName(alg),
                                                 " keys (", st.message(), ")"));
}

absl::StatusOr<std::vector<uint32_t>> Tpm::TransientHandles() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  TPMS_CAPABILITY_DATA* raw = nullptr;
  TPMI_YES_NO more = TPM2_NO;
  ++commands_;
  TSS2_RC rc = Esys_GetCapability(impl_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                  TPM2_CAP_HANDLES, TPM2_TRANSIENT_FIRST, TPM2_MAX_CAP_HANDLES,
                                  &more, &raw);
  EsysPtr<TPMS_CAPABILITY_DATA> data(raw);
  RETURN_IF_ERROR(TssError(rc, "TPM2_GetCapability(HANDLES)"));
  std::vector<uint32_t> out;
  for (uint32_t i = 0; i < data->data.handles.count && i < TPM2_MAX_CAP_HANDLES; ++i) {
    out.push_back(data->data.handles.handle[i]);
  }
  return out;
}

absl::StatusOr<std::vector<uint32_t>> Tpm::FlushTransientObjects() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  ASSIGN_OR_RETURN(std::vector<uint32_t> handles, TransientHandles());
  std::vector<uint32_t> flushed;
  for (uint32_t h : handles) {
    ESYS_TR tr = ESYS_TR_NONE;
    ++commands_;
    TSS2_RC rc = Esys_TR_FromTPMPublic(impl_->esys, h, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr);
    if (rc != TSS2_RC_SUCCESS) {
      continue;  // gone meanwhile
    }
    ++commands_;
    rc = Esys_FlushContext(impl_->esys, tr);
    if (rc != TSS2_RC_SUCCESS) {
      Esys_TR_Close(impl_->esys, &tr);
      RETURN_IF_ERROR(TssError(rc, "TPM2_FlushContext", absl::StrCat("transient object ", FormatHandle(h))));
    }
    flushed.push_back(h);
  }
  return flushed;
}

// ---------------------------------------------------------------------------------------------
// Capabilities and clock (for reports such as `hwid tpm check`)

// CapabilityPages calls TPM2_GetCapability(cap, property, count) and `take` on each page,
// following "more data"; `take` returns the next property to ask for (0: stop). Bounded.
template <typename Take>
absl::Status CapabilityPages(ESYS_CONTEXT* esys, uint64_t* commands, uint32_t cap,
                             uint32_t property, uint32_t count, const char* what, Take take) {
  for (int guard = 0; guard < 64; ++guard) {
    TPMS_CAPABILITY_DATA* raw = nullptr;
    TPMI_YES_NO more = TPM2_NO;
    ++*commands;
    TSS2_RC rc = Esys_GetCapability(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, cap,
                                    property, count, &more, &raw);
    EsysPtr<TPMS_CAPABILITY_DATA> data(raw);
    RETURN_IF_ERROR(TssError(rc, what));
    property = take(data->data);
    if (more == TPM2_NO || property == 0) {
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<AlgorithmInfo>> Tpm::GetAlgorithms() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  std::vector<AlgorithmInfo> out;
  RETURN_IF_ERROR(CapabilityPages(
      impl_->esys, &commands_, TPM2_CAP_ALGS, TPM2_ALG_FIRST, TPM2_MAX_CAP_ALGS,
      "TPM2_GetCapability(ALGS)", [&](const TPMU_CAPABILITIES& c) -> uint32_t {
        const TPML_ALG_PROPERTY& list = c.algorithms;
        for (uint32_t i = 0; i < list.count && i < TPM2_MAX_CAP_ALGS; ++i) {
          out.push_back(AlgorithmInfo{list.algProperties[i].alg, list.algProperties[i].algProperties});
        }
        return list.count == 0 ? 0 : list.algProperties[list.count - 1].alg + 1u;
      }));
  return out;
}

absl::StatusOr<std::vector<uint16_t>> Tpm::GetEccCurves() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  std::vector<uint16_t> out;
  RETURN_IF_ERROR(CapabilityPages(
      impl_->esys, &commands_, TPM2_CAP_ECC_CURVES, 0, TPM2_MAX_ECC_CURVES,
      "TPM2_GetCapability(ECC_CURVES)", [&](const TPMU_CAPABILITIES& c) -> uint32_t {
        const TPML_ECC_CURVE& list = c.eccCurves;
        for (uint32_t i = 0; i < list.count && i < TPM2_MAX_ECC_CURVES; ++i) {
          out.push_back(list.eccCurves[i]);
        }
        return list.count == 0 ? 0 : list.eccCurves[list.count - 1] + 1u;
      }));
  return out;
}

absl::StatusOr<ClockInfo> Tpm::ReadClock() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  TPMS_TIME_INFO* raw = nullptr;
  ++commands_;
  TSS2_RC rc = Esys_ReadClock(impl_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &raw);
  EsysPtr<TPMS_TIME_INFO> t(raw);
  RETURN_IF_ERROR(TssError(rc, "TPM2_ReadClock"));
  ClockInfo c;
  c.time_ms = t->time;
  c.clock_ms = t->clockInfo.clock;
  c.reset_count = t->clockInfo.resetCount;
  c.restart_count = t->clockInfo.restartCount;
  c.safe = t->clockInfo.safe == TPM2_YES;
  return c;
}

}  // namespace hwid::tpm
