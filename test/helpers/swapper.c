/*
 * Swaps two names in a directory with renameat2(RENAME_EXCHANGE), as fast as it can,
 * for test/real/symlink-race.test.ts: one name is a directory inside a rootfs, the
 * other a symlink to the host, and the exchange is atomic, so at every instant one of
 * the two is at the path the library is resolving.
 *
 *   swapper <dir> <name> <other name>
 *
 * Prints "ready" once swapping, and on SIGTERM "<swaps> <busy> <other failures>" (busy:
 * EBUSY, refused by the kernel because one of the names is a mount point).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE 2
#endif

static volatile sig_atomic_t stop;

static void on_term(int sig) {
  (void)sig;
  stop = 1;
}

int main(int argc, char **argv) {
  if (argc != 4 || chdir(argv[1]) != 0) return 2;
  signal(SIGTERM, on_term);
  unsigned long swaps = 0, busy = 0, other = 0;
  printf("ready\n");
  fflush(stdout);
  while (!stop) {
    if (syscall(SYS_renameat2, AT_FDCWD, argv[2], AT_FDCWD, argv[3], RENAME_EXCHANGE) == 0) swaps++;
    else if (errno == EBUSY) busy++;
    else other++;
  }
  printf("%lu %lu %lu\n", swaps, busy, other);
  return 0;
}
