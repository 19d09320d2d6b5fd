// How locks name what they cover, shared by the servers' lock managers and the clients' lock
// caches (the wire carries these numbers in LockRequest and GrantedLock).
#pragma once

#include <cstdint>

namespace cairn {

// Resource types.
constexpr uint32_t RES_INODE = 1;   // metadata target: an inode (bits below)
constexpr uint32_t RES_OBJECT = 2;  // data target: a file object (byte extents)
constexpr uint32_t RES_SERVER = 3;  // the active-server lock

// Inode bits: what of an inode a lock covers. Separate bits keep a chmod from dropping cached
// pages, or a write from dropping the directory entries that name the file.
constexpr uint64_t BIT_LOOKUP = 1;  // a directory's entries (names -> inodes)
constexpr uint64_t BIT_ATTR = 2;    // attributes
constexpr uint64_t BIT_LAYOUT = 4;  // layout
constexpr uint64_t BIT_XATTR = 8;   // extended attributes
constexpr uint64_t BIT_DATA = 16;   // file contents (the page cache)

}  // namespace cairn
