// The client's metadata cache alone: the bound on names, what "complete" means past it, and
// the directory stamps that say whether a listing kept ahead is still the directory.
#include <gtest/gtest.h>

#include <string>

#include "fusefs/meta_cache.h"

namespace cairn {
namespace {

TEST(MetaCache, NamesPastTheBoundAreNotCached) {
  MetaCache cache(3);
  for (int i = 0; i < 5; ++i) cache.setEntry(1, "f" + std::to_string(i), 100 + i);
  EXPECT_EQ(cache.names(), 3u);
  EXPECT_EQ(cache.entry(1, "f0").orDefault(0), 100u);
  EXPECT_TRUE(cache.entry(1, "f4") == nullptr);
}

// A listing that reached its end while names were left out does not make "not found" mean
// "none": a lookup of a left-out name must go to the server.
TEST(MetaCache, AListingWithNamesLeftOutIsNotComplete) {
  MetaCache cache(3);
  for (int i = 0; i < 5; ++i) cache.setEntry(1, "f" + std::to_string(i), 100 + i);
  cache.markComplete(1);
  EXPECT_FALSE(cache.complete(1));
  // Once the directory is dropped (its lock gone) and listed again with room, it is complete.
  cache.dropDir(1);
  cache.setEntry(1, "g", 7);
  cache.markComplete(1);
  EXPECT_TRUE(cache.complete(1));
  // Another directory with room is not affected by the first one's missing names.
  cache.setEntry(2, "h", 8);
  cache.markComplete(2);
  EXPECT_TRUE(cache.complete(2));
}

// Empty is known only of a complete directory whose every name is known not to exist.
TEST(MetaCache, ADirectoryIsKnownEmptyOnlyWhenCompleteAndEveryNameGone) {
  MetaCache cache;
  cache.setEntry(1, "a", 5);
  cache.setEntry(1, "b", 6);
  EXPECT_FALSE(cache.knownEmpty(1));  // not complete: there may be more
  cache.markComplete(1);
  EXPECT_FALSE(cache.knownEmpty(1));
  cache.setEntry(1, "a", 0);
  EXPECT_FALSE(cache.knownEmpty(1));
  cache.setEntry(1, "b", 0);
  EXPECT_TRUE(cache.knownEmpty(1));
  cache.dropEntry(1, "c");  // a name forgotten: no longer complete
  EXPECT_FALSE(cache.knownEmpty(1));
  cache.markComplete(2);  // made by us, nothing in it
  EXPECT_TRUE(cache.knownEmpty(2));
}

// Stamps change with the names, and a dropped directory's stamp is never handed out again.
TEST(MetaCache, StampsChangeAndGoWithTheirDirectory) {
  MetaCache cache;
  EXPECT_EQ(cache.dirStamp(1), 0u);
  cache.setEntry(1, "a", 5);
  uint64_t first = cache.dirStamp(1);
  EXPECT_NE(first, 0u);
  cache.setEntry(1, "a", 5);  // unchanged
  EXPECT_EQ(cache.dirStamp(1), first);
  cache.setEntry(1, "a", 6);
  uint64_t second = cache.dirStamp(1);
  EXPECT_NE(second, first);
  cache.dropDir(1);
  EXPECT_EQ(cache.dirStamp(1), 0u);  // nothing kept for a directory no longer cached
  cache.setEntry(1, "a", 6);
  EXPECT_NE(cache.dirStamp(1), first);
  EXPECT_NE(cache.dirStamp(1), second);
  cache.clear();
  EXPECT_EQ(cache.dirStamp(1), 0u);
}

}  // namespace
}  // namespace cairn
