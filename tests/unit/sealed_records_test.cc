// Sealed records on their own: keys from a test's derivation instead of a TLS session.
#include "rpc/sealed_records.h"

#include <gtest/gtest.h>
#include <kj/array.h>
#include <kj/debug.h>
#include <kj/exception.h>
#include <kj/vector.h>

#include <cstring>
#include <string>

namespace cairn {
namespace {

using Bytes = kj::Array<kj::byte>;

// Both ends' key material from one seed (a stand-in for the TLS exporter), counting the calls.
SealedRecords::Derive fromSeed(uint8_t seed, int* calls = nullptr) {
  return [seed, calls](uint64_t generation, kj::ArrayPtr<kj::byte> out) {
    if (calls != nullptr) ++*calls;
    for (size_t i = 0; i < out.size(); ++i) out[i] = kj::byte(seed * 31 + generation * 7 + i);
  };
}

Bytes pattern(size_t size, int seed) {
  auto b = kj::heapArray<kj::byte>(size);
  for (size_t i = 0; i < size; ++i) b[i] = kj::byte((i * 131 + seed * 17) >> 3);
  return b;
}

// One record sealed whole: header, ciphertext, tag.
Bytes sealRecord(SealedRecords& s, kj::ArrayPtr<const kj::byte> plain) {
  auto r = kj::heapArray<kj::byte>(SealedRecords::HEADER + plain.size() + SealedRecords::TAG);
  s.beginSeal(plain.size(), r.begin());
  s.seal(plain.begin(), r.begin() + SealedRecords::HEADER, plain.size());
  s.endSeal(r.begin() + SealedRecords::HEADER + plain.size());
  return r;
}

// Opens one record whole (its tag where its header's length puts it); throws if it does not
// check out.
Bytes openRecord(SealedRecords& s, kj::ArrayPtr<const kj::byte> record) {
  size_t length = s.beginOpen(record.begin());
  KJ_REQUIRE(SealedRecords::HEADER + length + SealedRecords::TAG <= record.size(),
             "a length beyond the bytes there");
  auto plain = kj::heapArray<kj::byte>(length);
  s.open(record.begin() + SealedRecords::HEADER, plain.begin(), length);
  s.endOpen(record.begin() + SealedRecords::HEADER + length);
  return plain;
}

std::string failure(kj::Function<void()> f) {
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { f(); })) {
    return e->getDescription().cStr();
  }
  return "";
}

TEST(SealedRecords, WhatOneEndSealsTheOtherOpensInPiecesAndInPlace) {
  SealedRecords client(false, fromSeed(1)), server(true, fromSeed(1));
  auto a = pattern(100000, 1), b = pattern(5, 2), c = pattern(0, 3);
  auto ra = sealRecord(client, a);
  auto rb = sealRecord(client, b);
  auto rc = sealRecord(client, c);
  // The ciphertext is not the text.
  EXPECT_EQ(memmem(ra.begin(), ra.size(), a.begin() + 1000, 64), nullptr);
  // Opened in odd-sized pieces, in place, as a reader does straight into its buffer.
  size_t length = server.beginOpen(ra.begin());
  ASSERT_EQ(length, a.size());
  kj::byte* body = ra.begin() + SealedRecords::HEADER;
  for (size_t at = 0, step = 1; at < length; at += step, step = step * 3 + 1) {
    step = kj::min(step, length - at);
    server.open(body + at, body + at, step);
  }
  server.endOpen(body + length);
  EXPECT_EQ(kj::arrayPtr(body, length), a.asPtr());
  EXPECT_EQ(openRecord(server, rb), b);
  EXPECT_EQ(openRecord(server, rc).size(), 0u);
  // And the other way, with the other direction's keys.
  auto back = pattern(3000, 4);
  EXPECT_EQ(openRecord(client, sealRecord(server, back)), back);
}

TEST(SealedRecords, AChangedByteFailsTheRecord) {
  // The length (64 made 48: the tag is then taken from the ciphertext), the ciphertext, the tag.
  for (size_t at :
       {size_t(3), size_t(SealedRecords::HEADER + 10), size_t(SealedRecords::HEADER + 64 + 3)}) {
    SealedRecords client(false, fromSeed(1)), server(true, fromSeed(1));
    auto record = sealRecord(client, pattern(64, 1));
    record[at] ^= 0x70;
    auto why = failure([&]() { openRecord(server, record); });
    EXPECT_NE(why.find("failed its check"), std::string::npos) << at << ": " << why;
  }
}

TEST(SealedRecords, ARecordDroppedRepeatedReorderedOrTurnedBackFails) {
  auto first = pattern(40, 1), second = pattern(40, 2);
  {  // dropped: the second record arrives where the first was due
    SealedRecords client(false, fromSeed(1)), server(true, fromSeed(1));
    sealRecord(client, first);
    auto r2 = sealRecord(client, second);
    EXPECT_NE(failure([&]() { openRecord(server, r2); }), "");
  }
  {  // repeated
    SealedRecords client(false, fromSeed(1)), server(true, fromSeed(1));
    auto r1 = sealRecord(client, first);
    EXPECT_EQ(openRecord(server, r1), first);
    EXPECT_NE(failure([&]() { openRecord(server, r1); }), "");
  }
  {  // reflected: a client's record sent back to it as if from the server
    SealedRecords client(false, fromSeed(1));
    auto r1 = sealRecord(client, first);
    EXPECT_NE(failure([&]() { openRecord(client, r1); }), "");
  }
  {  // another session's keys
    SealedRecords client(false, fromSeed(1)), server(true, fromSeed(2));
    EXPECT_NE(failure([&]() { openRecord(server, sealRecord(client, first)); }), "");
  }
}

TEST(SealedRecords, BothEndsMoveToNewKeysAtTheSameRecord) {
  int clientCalls = 0, serverCalls = 0;
  SealedRecords::Rekey often{5, 1000};
  SealedRecords client(false, fromSeed(1, &clientCalls), often);
  SealedRecords server(true, fromSeed(1, &serverCalls), often);
  // Small records rekey by count, large ones by bytes.
  for (int i = 0; i < 23; ++i) {
    auto text = pattern(i % 2 == 0 ? 700 : 10, i);
    auto record = sealRecord(client, text);
    ASSERT_EQ(openRecord(server, record), text) << i;
  }
  // 2 at the start, then one per new generation: more than the count alone would make.
  EXPECT_GT(clientCalls, 2 + 23 / 5);
  EXPECT_EQ(clientCalls, serverCalls);
  // The new keys are not the old ones: a record of generation 0 does not open now.
  SealedRecords fresh(false, fromSeed(1), often);
  auto stale = sealRecord(fresh, pattern(10, 99));
  EXPECT_NE(failure([&]() { openRecord(server, stale); }), "");
}

TEST(SealedRecords, ALengthBeyondTheLimitIsRefusedBeforeAnythingIsRead) {
  SealedRecords server(true, fromSeed(1));
  kj::byte header[SealedRecords::HEADER] = {0xff, 0xff, 0xff, 0xff};
  auto why = failure([&]() { server.beginOpen(header); });
  EXPECT_NE(why.find("longer than any peer sends"), std::string::npos) << why;
  // And a sender never makes one.
  SealedRecords client(false, fromSeed(1));
  EXPECT_NE(failure([&]() { client.beginSeal(SealedRecords::MAX_RECORD + 1, header); }), "");
}

}  // namespace
}  // namespace cairn
