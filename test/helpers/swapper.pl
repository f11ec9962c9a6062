# The fallback of swapper.c where there is no C compiler: the same loop, through
# Perl's syscall(). Perl is part of every Debian system.
#
#   perl swapper.pl <renameat2 syscall number> <dir> <name> <other name>
use strict;
use warnings;

my ($renameat2, $dir, $a, $b) = @ARGV;
my ($AT_FDCWD, $RENAME_EXCHANGE) = (-100, 2);
chdir $dir or exit 2;
my ($swaps, $busy, $other, $stop) = (0, 0, 0, 0);
$SIG{TERM} = sub { $stop = 1 };
$| = 1;
print "ready\n";
while (!$stop) {
  if (syscall($renameat2, $AT_FDCWD, $a, $AT_FDCWD, $b, $RENAME_EXCHANGE) == 0) { $swaps++ }
  elsif ($!{EBUSY}) { $busy++ }
  else { $other++ }
}
print "$swaps $busy $other\n";
