#!/bin/bash
# What people do with a filesystem: cp -a, tar, git clone, make, rsync, editors' save-by-rename.
source "$(dirname "$0")/lib.sh"
cleanup() {
  cd /
  "$ROOT/tools/cluster" down --dir "$T/state" --bin "$BUILD" >/dev/null 2>&1 || true
  rm -rf "$T"
}
trap cleanup EXIT
"$ROOT/tools/cluster" up --dir "$T/state" --mount "$T/mnt" --bin "$BUILD" >/dev/null
M=$T/mnt
SRC=/usr/include/linux

cp -a "$SRC" "$M/cp"
check "cp -a copies a tree exactly" diff -r "$SRC" "$M/cp"
check "cp -a keeps modes and times" \
  test "$(cd "$SRC" && find . -printf '%m %TY%Tm%Td%TH%TM %p\n' | sort | md5sum)" = \
       "$(cd "$M/cp" && find . -printf '%m %TY%Tm%Td%TH%TM %p\n' | sort | md5sum)"

tar -C /usr/include -cf "$T/inc.tar" linux sys 2>/dev/null || tar -C /usr/include -cf "$T/inc.tar" linux
mkdir "$M/tar"
check "tar x" tar -C "$M/tar" -xf "$T/inc.tar"
check "tar d finds no difference" tar -C "$M/tar" -df "$T/inc.tar"

mkdir "$T/repo"
(
  cd "$T/repo"
  git init -q
  git config user.email test@example.com
  git config user.name test
  for i in 1 2 3; do
    echo "line $i" >> file.txt
    cp "$SRC/fs.h" "copy$i.h"
    git add -A
    git commit -qm "commit $i"
  done
)
check "git clone" git clone -q "$T/repo" "$M/clone"
check "git fsck" bash -c "git -C '$M/clone' fsck --full >/dev/null 2>&1"
check "git log" test "$(git -C "$M/clone" log --oneline | wc -l)" -eq 3
(
  cd "$M/clone"
  git config user.email test@example.com
  git config user.name test
  echo more >> file.txt
  git commit -qam "on cairn"
  git gc -q
)
check "git works in the clone" test "$(git -C "$M/clone" log --oneline | wc -l)" -eq 4
check "git status is clean" test -z "$(git -C "$M/clone" status --porcelain)"

mkdir "$M/proj"
cat > "$M/proj/main.c" <<'C'
#include <stdio.h>
int add(int, int);
int main(void) { printf("%d\n", add(2, 3)); return 0; }
C
echo 'int add(int a, int b) { return a + b; }' > "$M/proj/add.c"
cat > "$M/proj/Makefile" <<'MK'
prog: main.o add.o
	$(CC) -o $@ $^
%.o: %.c
	$(CC) -c -o $@ $<
MK
check "make builds" make -s -C "$M/proj"
check "the program runs" test "$("$M/proj/prog")" = 5
check "make sees nothing to do" bash -c "make -C '$M/proj' | grep -q 'up to date'"
sleep 1
echo 'int add(int a, int b) { return a * b; }' > "$M/proj/add.c"
make -s -C "$M/proj"
check "make rebuilds what changed" test "$("$M/proj/prog")" = 6

check "rsync -a" rsync -a "$SRC/" "$M/rsync/"
check "rsync finds nothing to do" test -z "$(rsync -aci --dry-run "$SRC/" "$M/rsync/")"

printf 'alpha\nbeta\n' > "$M/edit.txt"
sed -i 's/beta/gamma/' "$M/edit.txt"
check "sed -i (write a temp file, rename over)" test "$(cat "$M/edit.txt")" = "$(printf 'alpha\ngamma')"
python3 - "$M/edit.txt" <<'PY'
import os, sys, tempfile
path = sys.argv[1]
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
with os.fdopen(fd, "w") as f:
    f.write("saved by an editor\n")
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, path)
PY
check "save by rename" test "$(cat "$M/edit.txt")" = "saved by an editor"

check "rm -rf of everything" rm -rf "$M/cp" "$M/tar" "$M/clone" "$M/proj" "$M/rsync"
check "the mount is empty but for one file" test "$(ls -A "$M")" = "edit.txt"
echo "$CHECKS passed, 0 failed"
