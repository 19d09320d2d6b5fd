// The cluster's certificate authority, as `cairnctl ca init` and `cairnctl cert issue` run it:
// an EC P-256 CA key and self-signed certificate, and certificates it signs for servers, client
// hosts and administrators, written as the credentials directories that `--tls DIR` reads
// (rpc/transport.h: ca.crt, cert.crt, cert.key, and crl.pem once something is revoked). Built on
// Debian's OpenSSL (libcrypto).
#pragma once

#include <string>
#include <vector>

namespace cairn::ca {

// Makes a CA in `dir` (created if need be): ca.key (mode 0600) and ca.crt, valid `days`.
// Refuses to overwrite a CA that is there.
void init(const std::string& dir, const std::string& name, int days);

struct Request {
  std::string role;  // "server", "client" or "admin"
  std::string name;
  int days = 825;
  // Starts the validity this many days in the past (tests make expired certificates with it).
  int backdateDays = 0;
};

// Signs a certificate with the CA in `caDir` and writes the credentials directory `outDir`:
// ca.crt (a copy), cert.crt, cert.key (mode 0600). Its common name is "ROLE:NAME"; a server's
// also names the host cairn-server. Refuses to overwrite.
void issue(const std::string& caDir, const std::string& outDir, const Request& request);

// Adds the certificates (cert.crt files this CA signed) to its revocation list, `caDir`/crl.pem,
// made if need be, re-signed each time and valid as long as the CA. A credentials directory
// holding a copy (crl.pem beside ca.crt) refuses their handshakes from its next start. Returns
// each certificate's common name ("client:laptop").
std::vector<std::string> revoke(const std::string& caDir, const std::vector<std::string>& certs);

}  // namespace cairn::ca
