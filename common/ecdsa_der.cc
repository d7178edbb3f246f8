#include "common/ecdsa_der.h"

namespace hwid {
namespace {

// AppendInteger appends a DER INTEGER holding the unsigned big-endian value `v`.
void AppendInteger(ByteSpan v, Bytes& out) {
  size_t i = 0;
  while (i < v.size() && v[i] == 0) {
    ++i;
  }
  const ByteSpan digits = v.subspan(i);
  const bool pad = digits.empty() || (digits[0] & 0x80) != 0;  // 0 is encoded as 02 01 00
  out.push_back(0x02);
  out.push_back(static_cast<uint8_t>(digits.size() + (pad ? 1 : 0)));
  if (pad) {
    out.push_back(0x00);
  }
  out.insert(out.end(), digits.begin(), digits.end());
}

}  // namespace

Bytes EcdsaDerFromRS(ByteSpan r, ByteSpan s) {
  Bytes body;
  body.reserve(r.size() + s.size() + 6);
  AppendInteger(r, body);
  AppendInteger(s, body);
  Bytes out;
  out.reserve(body.size() + 3);
  out.push_back(0x30);
  if (body.size() >= 0x80) {
    out.push_back(0x81);
  }
  out.push_back(static_cast<uint8_t>(body.size()));
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

}  // namespace hwid
