// buildWrites: a request with many pieces stays a message the server can read (Cap'n Proto's
// reader refuses 512 segments or more, and a referenced piece is a segment of its own), the
// large pieces are still referenced rather than copied, and every piece arrives as written.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>
#include <kj/io.h>

#include "fusefs/data_batch.h"

namespace cairn {
namespace {

// `count` pieces of `size` bytes of object 7, one every 2 * size bytes (gaps between them, as
// a file written in places), each filled with its own byte; the bytes word-aligned.
struct Pieces {
  Pieces(size_t count, size_t size) : bytes(kj::heapArray<capnp::word>(count * size / 8)) {
    auto all = bytes.asBytes();
    auto list = kj::heapArrayBuilder<StorePiece>(count);
    for (size_t i = 0; i < count; ++i) {
      auto piece = all.slice(i * size, (i + 1) * size);
      memset(piece.begin(), int(i % 251 + 1), size);
      list.add(StorePiece{2 * size * i, piece});
    }
    pieces = list.finish();
    write = ObjectPieces{7, pieces};
  }
  kj::Array<capnp::word> bytes;
  kj::Array<StorePiece> pieces;
  ObjectPieces write;
};

// The request as the server gets it: written out and read back by Cap'n Proto's stream reader,
// which applies the segment limit.
void expectReadable(capnp::MallocMessageBuilder& message, const Pieces& sent) {
  kj::VectorOutputStream out;
  capnp::writeMessage(out, message);
  kj::ArrayInputStream in(out.getArray());
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 64 << 20;
  capnp::InputStreamMessageReader reader(in, options);
  auto many = reader.getRoot<rpc::DataRequest>().getWriteMany();
  ASSERT_EQ(many.size(), sent.pieces.size());
  for (size_t i = 0; i < many.size(); ++i) {
    EXPECT_EQ(many[i].getObjectId(), 7u);
    EXPECT_EQ(many[i].getOffset(), sent.pieces[i].offset);
    auto data = many[i].getData();
    ASSERT_EQ(data.size(), sent.pieces[i].data.size());
    EXPECT_EQ(memcmp(data.begin(), sent.pieces[i].data.begin(), data.size()), 0) << "piece " << i;
  }
}

TEST(DataBatch, ManySmallPiecesMakeAMessageTheServerReads) {
  // A file written 4 KiB at a time with gaps: 1,000 pieces for one request, the case that once
  // made a message of over 512 segments.
  Pieces sent(1000, 4096);
  capnp::MallocMessageBuilder message;
  buildWrites(message.initRoot<rpc::DataRequest>(), kj::arrayPtr(&sent.write, 1));
  EXPECT_LT(message.getSegmentsForOutput().size(), 512u);
  expectReadable(message, sent);
}

TEST(DataBatch, LargePiecesAreReferencedUpToTheLimitAndCopiedBeyondIt) {
  Pieces sent(MAX_REFERENCED + 300, REFERENCE_FROM);
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<rpc::DataRequest>();
  buildWrites(request, kj::arrayPtr(&sent.write, 1));
  EXPECT_LT(message.getSegmentsForOutput().size(), 512u);
  auto many = request.asReader().getWriteMany();  // referenced bytes are const: readers only
  size_t referenced = 0;
  for (size_t i = 0; i < many.size(); ++i) {
    if (many[i].getData().begin() == sent.pieces[i].data.begin()) ++referenced;
  }
  EXPECT_EQ(referenced, MAX_REFERENCED);
  expectReadable(message, sent);
}

TEST(DataBatch, OnePieceIsAWriteAndALargeOneIsNotCopied) {
  Pieces sent(1, 1 << 20);
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<rpc::DataRequest>();
  buildWrites(request, kj::arrayPtr(&sent.write, 1));
  auto write = request.asReader();
  ASSERT_TRUE(write.isWrite());
  EXPECT_EQ(write.getWrite().getObjectId(), 7u);
  EXPECT_EQ(write.getWrite().getData().begin(), sent.pieces[0].data.begin());
}

}  // namespace
}  // namespace cairn
