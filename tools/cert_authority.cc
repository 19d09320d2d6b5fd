#include "tools/cert_authority.h"

#include <kj/debug.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <fcntl.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>

#include "rpc/transport.h"

namespace cairn::ca {

namespace {

// The last OpenSSL error, for messages.
std::string sslError() {
  char buf[256] = "unknown OpenSSL error";
  unsigned long e = ERR_get_error();
  if (e != 0) ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

#define SSL_REQUIRE(cond, what) KJ_REQUIRE(cond, what, sslError())

struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct CertDeleter {
  void operator()(X509* c) const { X509_free(c); }
};
struct CrlDeleter {
  void operator()(X509_CRL* c) const { X509_CRL_free(c); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyDeleter>;
using Cert = std::unique_ptr<X509, CertDeleter>;
using Crl = std::unique_ptr<X509_CRL, CrlDeleter>;

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// Makes `dir` and its parents; the directory itself readable by its owner only.
void makeDir(const std::string& dir) {
  std::error_code ec;
  bool made = std::filesystem::create_directories(dir, ec);
  KJ_REQUIRE(!ec, "cannot make", dir, ec.message());
  if (made) {
    KJ_REQUIRE(chmod(dir.c_str(), 0700) == 0, "cannot chmod", dir, strerror(errno));
  }
}

Key newKey() {
  Key key(EVP_EC_gen("P-256"));
  SSL_REQUIRE(key != nullptr, "generating a key");
  return key;
}

// Writes with `mode` from the start (a key is never readable by others, not even briefly).
void writePem(const std::string& path, int mode, const std::function<int(FILE*)>& write) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, mode);
  KJ_REQUIRE(fd >= 0, "cannot create", path, strerror(errno));
  FILE* f = fdopen(fd, "w");
  KJ_ASSERT(f != nullptr);
  int ok = write(f);
  KJ_REQUIRE(fclose(f) == 0 && ok == 1, "cannot write", path);
}

void writeKey(const std::string& path, EVP_PKEY* key) {
  writePem(path, 0600, [key](FILE* f) {
    return PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  });
}

void writeCert(const std::string& path, X509* cert) {
  writePem(path, 0644, [cert](FILE* f) { return PEM_write_X509(f, cert); });
}

// The CA's key or certificate, read with OpenSSL's PEM reader `read`.
template <typename Owned, typename Read>
Owned readPem(const std::string& path, const char* what, Read read) {
  FILE* f = fopen(path.c_str(), "r");
  KJ_REQUIRE(f != nullptr, "cannot read the CA's", what, path, strerror(errno));
  Owned out(read(f));
  fclose(f);
  SSL_REQUIRE(out != nullptr, "not PEM");
  return out;
}

Key readKey(const std::string& path) {
  return readPem<Key>(path, "key",
                      [](FILE* f) { return PEM_read_PrivateKey(f, nullptr, nullptr, nullptr); });
}

Cert readCert(const std::string& path) {
  return readPem<Cert>(path, "certificate",
                       [](FILE* f) { return PEM_read_X509(f, nullptr, nullptr, nullptr); });
}

void addExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  SSL_REQUIRE(ext != nullptr, "making a certificate extension");
  KJ_DEFER(X509_EXTENSION_free(ext));
  SSL_REQUIRE(X509_add_ext(cert, ext, -1) == 1, "adding a certificate extension");
}

// A certificate for `key` named `commonName`, valid from `backdateDays` ago for `days`; the
// caller adds extensions and signs.
Cert newCert(EVP_PKEY* key, const std::string& commonName, int days, int backdateDays) {
  Cert cert(X509_new());
  SSL_REQUIRE(cert != nullptr, "allocating a certificate");
  SSL_REQUIRE(X509_set_version(cert.get(), 2) == 1, "certificate version");
  // A random 127-bit serial: unique without the CA keeping a counter.
  BIGNUM* bn = BN_new();
  KJ_DEFER(BN_free(bn));
  SSL_REQUIRE(BN_rand(bn, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1, "serial number");
  SSL_REQUIRE(BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get())) != nullptr, "serial");
  long from = -long(backdateDays) * 86400;
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), from);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), from + long(days) * 86400);
  SSL_REQUIRE(X509_set_pubkey(cert.get(), key) == 1, "certificate key");
  X509_NAME* name = X509_get_subject_name(cert.get());
  SSL_REQUIRE(
      X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>("Cairn"), -1, -1, 0) == 1 &&
          X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                     reinterpret_cast<const unsigned char*>(commonName.c_str()), -1,
                                     -1, 0) == 1,
      "certificate name");
  return cert;
}

}  // namespace

void init(const std::string& dir, const std::string& name, int days) {
  KJ_REQUIRE(days > 0, "a CA must be valid for at least a day", days);
  makeDir(dir);
  KJ_REQUIRE(!exists(dir + "/ca.key") && !exists(dir + "/ca.crt"),
             "a CA is there already; not overwriting it", dir);
  Key key = newKey();
  Cert cert = newCert(key.get(), "Cairn CA " + name, days, 0);
  SSL_REQUIRE(X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get())) == 1, "issuer");
  addExtension(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
  addExtension(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
  addExtension(cert.get(), cert.get(), NID_subject_key_identifier, "hash");
  SSL_REQUIRE(X509_sign(cert.get(), key.get(), EVP_sha256()) > 0, "signing the CA certificate");
  writeKey(dir + "/ca.key", key.get());
  writeCert(dir + "/ca.crt", cert.get());
}

namespace {

// The common name of a certificate ("client:laptop"), for messages.
std::string commonName(X509* cert) {
  char buf[256] = "";
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, buf, sizeof(buf));
  return buf;
}

}  // namespace

std::vector<std::string> revoke(const std::string& caDir, const std::vector<std::string>& certs) {
  KJ_REQUIRE(!certs.empty(), "no certificate to revoke");
  Key caKey = readKey(caDir + "/ca.key");
  Cert caCert = readCert(caDir + "/ca.crt");
  std::string path = caDir + "/crl.pem";
  // The list so far, or a new one.
  Crl crl =
      exists(path)
          ? readPem<Crl>(path, "revocation list",
                         [](FILE* f) { return PEM_read_X509_CRL(f, nullptr, nullptr, nullptr); })
          : Crl(X509_CRL_new());
  SSL_REQUIRE(crl != nullptr, "allocating a revocation list");
  KJ_REQUIRE(!exists(path) || X509_CRL_verify(crl.get(), X509_get0_pubkey(caCert.get())) == 1,
             "the revocation list there is not this CA's", path);
  std::vector<std::string> names;
  for (auto& certPath : certs) {
    Cert cert = readPem<Cert>(certPath, "certificate to revoke",
                              [](FILE* f) { return PEM_read_X509(f, nullptr, nullptr, nullptr); });
    // Only what this CA signed: a serial of another CA's certificate means nothing here.
    KJ_REQUIRE(X509_verify(cert.get(), X509_get0_pubkey(caCert.get())) == 1,
               "this certificate was not signed by this CA", certPath);
    names.push_back(commonName(cert.get()));
    const ASN1_INTEGER* serial = X509_get0_serialNumber(cert.get());
    X509_REVOKED* already = nullptr;
    if (X509_CRL_get0_by_serial(crl.get(), &already, serial) == 1) continue;
    X509_REVOKED* entry = X509_REVOKED_new();
    SSL_REQUIRE(entry != nullptr, "allocating a revocation");
    ASN1_TIME* now = X509_gmtime_adj(nullptr, 0);
    bool made = X509_REVOKED_set_serialNumber(entry, const_cast<ASN1_INTEGER*>(serial)) == 1 &&
                X509_REVOKED_set_revocationDate(entry, now) == 1;
    ASN1_TIME_free(now);
    if (!made || X509_CRL_add0_revoked(crl.get(), entry) != 1) {
      X509_REVOKED_free(entry);
      SSL_REQUIRE(false, "adding a revocation");
    }
  }
  // Valid until the CA itself expires: a list past its next update fails every check, and the
  // servers read it only when they start.
  SSL_REQUIRE(X509_CRL_set_version(crl.get(), 1) == 1 &&
                  X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(caCert.get())) == 1,
              "revocation list header");
  ASN1_TIME* now = X509_gmtime_adj(nullptr, 0);
  bool dated = X509_CRL_set1_lastUpdate(crl.get(), now) == 1 &&
               X509_CRL_set1_nextUpdate(crl.get(), X509_get0_notAfter(caCert.get())) == 1;
  ASN1_TIME_free(now);
  SSL_REQUIRE(dated, "revocation list dates");
  SSL_REQUIRE(X509_CRL_sort(crl.get()) == 1, "sorting the revocation list");
  SSL_REQUIRE(X509_CRL_sign(crl.get(), caKey.get(), EVP_sha256()) > 0,
              "signing the revocation list");
  // Written aside, then renamed over the old list: never half a list.
  std::string fresh = path + ".new";
  unlink(fresh.c_str());
  writePem(fresh, 0644, [&crl](FILE* f) { return PEM_write_X509_CRL(f, crl.get()); });
  KJ_REQUIRE(rename(fresh.c_str(), path.c_str()) == 0, "cannot replace", path, strerror(errno));
  return names;
}

void issue(const std::string& caDir, const std::string& outDir, const Request& r) {
  kj::String name;
  // The same check the servers make on every connection.
  parseRole(kj::str(r.role.c_str(), ":", r.name.c_str()), &name);
  KJ_REQUIRE(r.name.find_first_of(":/ \t\n") == std::string::npos && r.name.size() <= 64,
             "a certificate name has no ':', '/' or blanks and at most 64 bytes", r.name);
  KJ_REQUIRE(r.days > 0, "a certificate must be valid for at least a day", r.days);
  Key caKey = readKey(caDir + "/ca.key");
  Cert caCert = readCert(caDir + "/ca.crt");
  makeDir(outDir);
  KJ_REQUIRE(!exists(outDir + "/cert.key") && !exists(outDir + "/cert.crt"),
             "credentials are there already; not overwriting them", outDir);
  Key key = newKey();
  Cert cert = newCert(key.get(), r.role + ":" + r.name, r.days, r.backdateDays);
  SSL_REQUIRE(X509_set_issuer_name(cert.get(), X509_get_subject_name(caCert.get())) == 1, "issuer");
  addExtension(cert.get(), caCert.get(), NID_basic_constraints, "critical,CA:FALSE");
  addExtension(cert.get(), caCert.get(), NID_key_usage, "critical,digitalSignature");
  addExtension(cert.get(), caCert.get(), NID_subject_key_identifier, "hash");
  addExtension(cert.get(), caCert.get(), NID_authority_key_identifier, "keyid");
  if (r.role == "server") {
    // A server answers connections and makes them (to its partner, to the metadata server).
    addExtension(cert.get(), caCert.get(), NID_ext_key_usage, "serverAuth,clientAuth");
    std::string san = "DNS:" + std::string(SERVER_HOST_NAME.cStr()) + ",DNS:" + r.name;
    addExtension(cert.get(), caCert.get(), NID_subject_alt_name, san.c_str());
  } else {
    addExtension(cert.get(), caCert.get(), NID_ext_key_usage, "clientAuth");
  }
  SSL_REQUIRE(X509_sign(cert.get(), caKey.get(), EVP_sha256()) > 0, "signing the certificate");
  writeKey(outDir + "/cert.key", key.get());
  writeCert(outDir + "/cert.crt", cert.get());
  if (!exists(outDir + "/ca.crt")) writeCert(outDir + "/ca.crt", caCert.get());
  // The revocation list, so that new credentials check their peers against it from the start.
  if (exists(caDir + "/crl.pem") && !exists(outDir + "/crl.pem")) {
    std::filesystem::copy_file(caDir + "/crl.pem", outDir + "/crl.pem");
  }
}

}  // namespace cairn::ca
