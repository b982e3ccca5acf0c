#!/usr/bin/perl

# A request the engine refuses after submission (its queue is full) was
# never served: it is not billed to the key's budget, not counted in
# vllm:request_success_total, and logs no token counts.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(chat_body);
use KimiConf;

# one sequence at a time and no queue: a second request is refused
my $t = KimiTest->new(delay_ms => 20,
    replies => [ { match => 'tell a long story',
                   text => join(' ', ('once upon a time') x 50) } ],
    default => { text => 'short answer' },
    engine_args => [ '--max-num-seqs', '1', '--max-waiting', '0' ]);
my $c = KimiConf->new($t, 'conf/kimi-keys.conf',
                      keys => "alice sk-alice-0123456789 100000/30d\n");
$c->start;

my %auth = (Authorization => 'Bearer sk-alice-0123456789');
my $label = 'model_name="kimi-test",engine="0"';

sub remaining {
    my ($v) = $t->get('/metrics')->{body} =~
        /^kimi:token_budget_remaining_tokens\{zone="kimi_budgets",key_id="alice"\} (-?\d+)$/m;
    return $v;
}

# a first request, so the key has a bucket and a balance to compare
my $r = $t->post('/v1/chat/completions', chat_body(max_tokens => 2), %auth);
is($r->{status}, 200, 'a first request is served');
# the client may see the end of a response before nginx logs it and runs
# the request's cleanup: wait for the log line, written after the debit
ok(KimiTest::wait_for(5, sub {
    $t->read_file('kimi-billing.log') =~ / completion=2 / }),
    'its log line is written');
my $before = remaining();
ok(defined $before, "the key has $before tokens left");

my $sock = $t->connect_gw;
print $sock KimiTest::request_text('POST', '/v1/chat/completions',
    chat_body(content => 'tell a long story', stream => \1, max_tokens => 60),
    %auth);
my $first = '';
sysread($sock, $first, 65536);
like($first, qr{^HTTP/1.1 200 }, 'a long stream holds the only sequence');

$r = $t->post('/v1/chat/completions', chat_body(max_tokens => 2), %auth);
ok($r->{status} == 429 || $r->{status} == 503,
    "a second request is refused by the engine ($r->{status})");
ok($r->{json}{error}{message}, 'with an OpenAI error body');

my $raw = $first;
while (sysread($sock, my $buf, 65536)) { $raw .= $buf }
close $sock;
like($raw, qr/data: \[DONE\]/, 'the long stream finishes');

my $m = $t->get('/metrics')->{body};
my $served = 0;
$served += $_ for $m =~ /^vllm:request_success_total\{\Q$label\E,finished_reason="[a-z]+"\} (\d+)$/mg;
is($served, 2, 'only the two served requests are counted');

ok(KimiTest::wait_for(5, sub { $t->read_file('kimi-billing.log') =~ /status=(429|503) / }),
    'the refusal is logged');
my ($line) = grep { /status=(429|503) / } split /\n/, $t->read_file('kimi-billing.log');
like($line, qr/ rank=- status=\d+ prompt=- completion=- /,
    'with no rank and no token counts');

ok(KimiTest::wait_for(5, sub {
    $t->read_file('kimi-billing.log') =~ / completion=60 / }),
    "the stream's log line is written");
my $after = remaining();
ok($before - $after > 0, 'the long stream was billed (' . ($before - $after)
    . ' tokens)');
# 100000 tokens per 30 days refill 0.04 per second: nothing in this test
my ($stream_line) = grep { /status=200 .*completion=60 / } split /\n/,
    $t->read_file('kimi-billing.log');
my ($p, $cpl) = ($stream_line // '') =~ /prompt=(\d+) completion=(\d+)/;
is($before - $after, ($p // 0) + ($cpl // 0),
    'and only it: the refused request cost nothing')
    or diag($t->read_file('kimi-billing.log'));

$t->stop;

done_testing();
