#!/usr/bin/perl

# Per-key token budgets (conf/kimi-keys.conf): checked on arrival, debited
# with the real usage at the end (also when the client aborts), 429 with
# Retry-After when spent, debt capped at one bucket, refilled over the
# period, kept across nginx -s reload, visible in $kimi_budget_remaining
# and /metrics.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(chat_body);
use KimiConf;

my $t = KimiTest->new(
    delay_ms => 5,
    replies => [ { match => 'tell a long story',
                   text => join(' ', ('once upon a time') x 200) } ],
    default => { text => 'short answer here' });

my $c = KimiConf->new($t, 'conf/kimi-keys.conf', keys => <<'EOF');
alice    sk-alice-0123456789      60/1h
bob      sk-bob-abcdefghij        1000000/1h
carol    sk-carol-0123456789      1000/2s
dave     sk-dave-0123456789       100000/1h
EOF

$c->start;

sub as { (Authorization => "Bearer $_[0]") }

sub remaining_metric {
    my ($id) = @_;
    my $m = $t->get('/metrics')->{body};
    my ($v) = $m =~ /^kimi:token_budget_remaining_tokens\{zone="kimi_budgets",key_id="\Q$id\E"\} (-?\d+)$/m;
    return $v;
}

# --- debit with the real usage ------------------------------------------------

my $r = $t->post('/v1/chat/completions', chat_body(max_tokens => 4),
    as('sk-alice-0123456789'));
is($r->{status}, 200, 'a key with budget left is admitted');
is($r->{headers}{'x-ratelimit-remaining-tokens'}, 60,
    'a fresh key starts with its whole budget');
my $used = $r->{json}{usage}{total_tokens};
ok($used && $used > 4, "the request used $used tokens (prompt + completion)");

ok(KimiTest::wait_for(5, sub {
    $t->read_file('kimi-billing.log') =~ /key=alice .*budget_left=(\d+)/
        && $1 == 60 - $used }),
    '$kimi_budget_remaining is the budget minus the real usage');

is(remaining_metric('alice'), 60 - $used,
    '/metrics shows the same remaining budget');

# --- spent: 429 with Retry-After -------------------------------------------------

my ($refused, $n) = (undef, 0);
while ($n++ < 20) {
    $r = $t->post('/v1/chat/completions', chat_body(max_tokens => 4),
        as('sk-alice-0123456789'));
    if ($r->{status} == 429) { $refused = $r; last; }
    is($r->{status}, 200, "request $n is admitted while tokens are left");
}

ok($refused, 'once the budget is spent the key gets 429');

# a client may see a response end before nginx runs its cleanup (the
# debit) and logs it: wait until every admitted request is logged
sub logged {
    my ($re) = @_;
    return scalar grep { /$re/ } split /\n/, $t->read_file('kimi-billing.log');
}
ok(KimiTest::wait_for(5, sub { logged(qr/key=alice .*status=200/) == $n }),
    "all $n admitted requests of alice are debited and logged");
is($refused->{json}{error}{code}, 'rate_limit_exceeded',
    '429 code is rate_limit_exceeded');
is($refused->{json}{error}{type}, 'tokens', '429 type is tokens');
like($refused->{json}{error}{message}, qr/'alice'.*60 tokens per 3600 s/,
    '429 message names the key and its budget');
like($refused->{headers}{'retry-after'} // '', qr/^\d+$/,
    '429 carries Retry-After in seconds');
ok(($refused->{headers}{'retry-after'} // 0) >= 1
    && $refused->{headers}{'retry-after'} <= 3600,
    'Retry-After is within one period');
is($refused->{headers}{'x-ratelimit-remaining-tokens'}, 0,
    'remaining tokens read 0 when refused');

like($t->get('/metrics')->{body},
    qr/^kimi:api_key_rejections_total\{reason="budget"\} 1$/m,
    'the budget refusal is counted');

# the refusal costs nothing and happens before any engine work
my $before = remaining_metric('alice');
$t->post('/v1/chat/completions', chat_body(), as('sk-alice-0123456789'));
is(remaining_metric('alice'), $before, 'a refused request is not billed');

# --- other keys are not affected ---------------------------------------------

is($t->post('/v1/chat/completions', chat_body(max_tokens => 4),
    as('sk-bob-abcdefghij'))->{status}, 200, 'another key still gets in');

# --- reload keeps what was spent ----------------------------------------------

$t->reload;
sleep 1;    # the old workers finish; new ones take the same zone
is($t->post('/v1/chat/completions', chat_body(), as('sk-alice-0123456789'))
    ->{status}, 429, 'a spent budget stays spent across nginx -s reload');

# --- debt is capped at one bucket; the bucket refills ----------------------------

my $long = 'tell a long story' . (' the' x 2500);
$r = $t->post('/v1/chat/completions', chat_body(content => $long,
    max_tokens => 10), as('sk-carol-0123456789'));
is($r->{status}, 200, 'carol is admitted with a full bucket');
ok(KimiTest::wait_for(5, sub { logged(qr/key=carol .*status=200/) == 1 }),
    "carol's request is debited and logged");
ok($r->{json}{usage}{total_tokens} > 2000,
    'and spends more than two buckets (' . ($r->{json}{usage}{total_tokens}
    // 0) . ' tokens)');

$r = $t->post('/v1/chat/completions', chat_body(), as('sk-carol-0123456789'));
is($r->{status}, 429, 'the overdrawn key is refused');
my $retry = $r->{headers}{'retry-after'} // 99;
ok($retry <= 3, "Retry-After $retry s: debt is capped at one bucket (1000 "
    . 'tokens per 2 s: at most 2 s plus one token)');

sleep $retry + 0.2;     # the bucket refills with time; nothing to wait on
$r = $t->post('/v1/chat/completions', chat_body(max_tokens => 2),
    as('sk-carol-0123456789'));
is($r->{status}, 200, 'after Retry-After seconds the key is admitted again');

# --- an aborted stream is billed for what it used --------------------------------

my $s = $t->sse('/v1/chat/completions',
    chat_body(content => 'tell a long story', stream => \1, max_tokens => 300),
    abort_after => 3, headers => { as('sk-dave-0123456789') });
ok($s->{closed_at}, 'client closed the stream early');
ok(KimiTest::wait_for(5, sub {
    my $left = remaining_metric('dave');
    defined $left && $left < 100000 - 3 }),
    'an aborted request is still debited with its usage');
ok(KimiTest::wait_for(5, sub {
    $t->read_file('kimi-billing.log') =~ /key=dave .*finish=abort/ }),
    'and logged with finish=abort');

$t->stop;

done_testing();
