#!/usr/bin/perl

# `make run` (t/lib/serve): with no MODEL it generates the tiny Kimi-K2
# model, starts kimi-engine (cpu backend) and nginx in the foreground on
# PORT, serves chat completions, and one Ctrl-C (SIGINT) stops both.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use POSIX qw(:sys_wait_h setpgid);
use Test::More;
use Time::HiRes qw(time sleep);
use KimiTest qw(chat_body);

my $build = $ENV{BUILD} // 'build';
for my $f ("$build/kimi-engine", "$build/nginx/objs/ngx_http_kimi_module.so") {
    plan skip_all => "$f is not built" unless -e $f;
}

my $dir = tempdir('kimi-serve-XXXXXX', TMPDIR => 1,
    CLEANUP => !$ENV{TEST_KIMI_LEAVE});
my $port = KimiTest::free_port();

my $pid = fork // die;
if ($pid == 0) {
    setpgid(0, 0);              # its own group, as a terminal would give it
    open STDOUT, '>', "$dir/serve.out" or die;
    open STDERR, '>&', \*STDOUT or die;
    $ENV{PORT} = $port;
    $ENV{RUN_DIR} = "$dir/run";
    $ENV{MODEL} = '';
    exec "$FindBin::Bin/lib/serve" or die;
}

# a stand-in object so the HTTP helpers can be used
my $t = bless { port => $port }, 'KimiTest';

my $healthy = KimiTest::wait_for(120, sub {
    return 1 if waitpid($pid, WNOHANG) != 0 && ($pid = 0);
    my $r = eval { $t->get('/health') };
    # /health answers for one worker: also wait for both of serve's
    # workers to have loaded their text stack (each logs it once)
    my $log = -e "$dir/run/logs/error.log"
        ? do { local (@ARGV, $/) = "$dir/run/logs/error.log"; eval { <> } }
        : '';
    $log //= '';
    my %loaded = map { $_ => 1 } $log =~ /(\d+)#\d+: kimi text stack loaded/g;
    $r && $r->{status} == 200 && keys %loaded >= 2;
});
ok($pid && $healthy, 'make run\'s script serves /health')
    or diag(`tail -20 $dir/serve.out`);

my $r = $t->post('/v1/chat/completions', { model => 'kimi-k2-tiny',
    messages => [ { role => 'user', content => 'Hello' } ],
    max_tokens => 3 });
is($r->{status}, 200, 'the tiny model answers a chat completion');
is($r->{json}{usage}{completion_tokens}, 3, 'with the tokens asked for');
# what `vllm serve` answers besides the API: /metrics (Prometheus text with
# vLLM's names, counting the request above), /version, /ping
my $m = $t->get('/metrics');
is($m->{status}, 200, 'make run serves /metrics');
like($m->{body}, qr/^vllm:request_success_total\{[^}]*finished_reason="length"[^}]*\} 1$/m,
    'counting the chat completion, under vLLM\'s name');
like($t->get('/version')->{body}, qr/^\{"version":\s*"\d+\.\d+\.\d+"\}$/, '/version');
is($t->get('/ping')->{status}, 200, '/ping');
# `make run` builds $(BUILD)/tiny-kimi-k2 first: serve must use that one,
# not generate a second copy elsewhere
like(do { local (@ARGV, $/) = "$dir/serve.out"; <> },
    qr{starting backend=cpu model="[^"]*/tiny-kimi-k2"},
    'it serves the tiny model the Makefile\'s tiny-model target writes');
# a long prompt must not stall other streams past kimi_token_timeout (60 s):
# the cpu backend's steps stay short by default
like(do { local (@ARGV, $/) = "$dir/serve.out"; <> },
    qr{starting backend=cpu .* max_num_batched_tokens=512\b},
    'the cpu backend defaults to 512 tokens per step');

SKIP: {
    skip 'serve is not running', 2 unless $pid;
    kill 'INT', -$pid;          # Ctrl-C: the whole foreground group
    my $end = time + 30;
    sleep 0.05 while time < $end && waitpid($pid, WNOHANG) == 0;
    ok(time < $end, 'Ctrl-C stops it');
    # nginx workers' cmdline names no path, but their stderr is our log
    my @left = grep {
        my $cmd = do { local (@ARGV, $/) = "/proc/$_/cmdline"; eval { <> } };
        ($cmd // '') =~ /\Q$dir\E/
            || (readlink("/proc/$_/fd/2") // '') =~ /\Q$dir\E/
    } map { m{/proc/(\d+)} } glob '/proc/[0-9]*';
    is(scalar @left, 0, 'no engine or nginx process is left')
        or kill 'KILL', @left;
}

done_testing;
