#!/usr/bin/perl

# `make install` with PREFIX and DESTDIR puts the engine, its systemd unit
# and defaults, and the module where they belong; the Debian packaging's
# build dependencies are satisfied by what `make deps` installs.  Building
# the .deb itself is `make deb` (slow, needs debhelper): not run here.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use Test::More;

my $build = $ENV{BUILD} // 'build';
for my $f ("$build/kimi-engine", "$build/nginx/objs/ngx_http_kimi_module.so") {
    plan(skip_all => "$f is not built") unless -e $f;
}

my $dest = tempdir('kimi-install-XXXXXX', TMPDIR => 1, CLEANUP => 1);

# -o: use what is built, never rebuild from inside a test
sub install {
    my ($prefix) = @_;
    my $out = `make --no-print-directory -o engine -o module BUILD=$build DESTDIR=$dest PREFIX=$prefix install 2>&1`;
    return ($? >> 8, $out);
}

my ($rc, $out) = install('/usr');
is($rc, 0, 'make install PREFIX=/usr DESTDIR=... succeeds') or diag($out);

ok(-x "$dest/usr/bin/kimi-engine", 'the engine is installed executable');
like(`$dest/usr/bin/kimi-engine serve --help 2>&1`, qr/--shutdown-timeout/,
    'the installed engine runs');
ok(-f "$dest/usr/lib/nginx/modules/ngx_http_kimi_module.so",
    "the module goes to Debian's nginx module dir");
ok(-f "$dest/etc/default/kimi-engine", 'the engine defaults file is installed');
ok(-f "$dest/usr/share/doc/kimi-nginx/examples/kimi-keys.conf",
    'the configuration examples are installed');

my $unit = do {
    local (@ARGV, $/) = "$dest/lib/systemd/system/kimi-engine.service"; <> };
ok($unit, 'the systemd unit is installed');
like($unit, qr{^ExecStart=/usr/bin/kimi-engine serve }m,
    'the unit runs the installed engine');

# an operator's edits to the defaults survive a reinstall
open my $fh, '>>', "$dest/etc/default/kimi-engine" or die;
print $fh "KIMI_ENGINE_ARGS=\"--model /srv/mine\"\n";
close $fh;
($rc, $out) = install('/opt/kimi');
is($rc, 0, 'a second install into the same DESTDIR succeeds') or diag($out);
like(do { local (@ARGV, $/) = "$dest/etc/default/kimi-engine"; <> },
    qr{/srv/mine}, 'and keeps the edited defaults');
ok(-x "$dest/opt/kimi/bin/kimi-engine", 'PREFIX=/opt/kimi is honoured');
like(do { local (@ARGV, $/) = "$dest/lib/systemd/system/kimi-engine.service"; <> },
    qr{^ExecStart=/opt/kimi/bin/kimi-engine }m, 'and the unit follows PREFIX');

SKIP: {
    skip 'systemd-analyze is not installed', 1
        unless grep { -x "$_/systemd-analyze" } split /:/, $ENV{PATH};
    # --root: the unit is checked against the staged tree (its binary)
    my $v = `systemd-analyze --root=$dest verify /lib/systemd/system/kimi-engine.service 2>&1`;
    unlike($v, qr/Failed to parse|Unknown (key|section)|[Ii]nvalid|not executable/,
        'systemd parses every line of the unit') or diag($v);
}

# --- Debian packaging -------------------------------------------------------------

SKIP: {
    skip 'dpkg-checkbuilddeps is not installed (dpkg-dev)', 3
        unless grep { -x "$_/dpkg-checkbuilddeps" } split /:/, $ENV{PATH};

    my $o = `dpkg-checkbuilddeps 2>&1`;
    is($?, 0, "debian/control parses and its build dependencies are met")
        or diag($o);

    $o = `dpkg-parsechangelog -S Version 2>&1`;
    like($o, qr/^\d+\.\d+\.\d+/, 'debian/changelog parses');

    ok(-x 'debian/rules', 'debian/rules is executable');
}

done_testing();
