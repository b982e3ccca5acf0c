#!/usr/bin/perl

# Timers and admission: an engine slower than kimi_first_token_timeout
# gets a 504 (non-streaming) or an error event (streaming) and the
# sequence is cancelled; kimi_token_timeout bounds the gap between tokens;
# kimi_queue_limit turns excess requests into 429 before any work.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(chat_body);

# 400 ms per token: every token misses a 150 ms timer
my $t = KimiTest->new(delay_ms => 400, default => { text => 'slow slow slow' },
    loc_conf => 'kimi_first_token_timeout 150ms;',
    server_conf => 'location /gap/ { kimi_pass; kimi_token_timeout 150ms; '
        . 'kimi_first_token_timeout 5s; } '
        . 'location /limited/ { kimi_pass; kimi_queue_limit 0; } '
        . 'location /hold/ { kimi_pass; kimi_first_token_timeout 5s; }');
$t->start;

my $true = JSON::PP::true;

my $r = $t->post('/v1/chat/completions', chat_body());
is($r->{status}, 504, 'no first token in time: 504');
is($r->{json}{error}{type}, 'timeout_error', '504 body is OpenAI-style');

# the replay engine accepts at its next 400 ms step: the stream's headers
# are still held, so its timeout is a real status too
$r = $t->sse('/v1/chat/completions', chat_body(stream => $true));
is($r->{status}, 504, 'a stream with no first token in time: 504 as well');
ok(KimiTest::wait_for(5, sub { $t->read_file('engine.log')
    =~ /sequence cancelled/ }),
    'timed-out sequences are cancelled in the engine');

$r = $t->sse('/gap/v1/chat/completions', chat_body(stream => $true));
my @content = grep { ref $_ eq 'HASH' && @{$_->{choices} // []}
    && defined $_->{choices}[0]{delta}{content} } @{$r->{events}};
ok(@content >= 2, 'under kimi_token_timeout the first token arrives');
ok((grep { ref $_ eq 'HASH' && $_->{error} } @{$r->{events}}),
    'a too long gap between tokens is an error event');

$r = $t->post('/limited/v1/chat/completions', chat_body());
is($r->{status}, 429, 'over kimi_queue_limit: 429');
is($r->{headers}{'retry-after'}, '1', '429 carries Retry-After');

# ---- the engine's own admission: REJECTED becomes that HTTP status ----------

$t->kill_engine('TERM');
$t->start_engine(args => [ '--max-num-seqs', '1', '--max-waiting', '0',
    '--max-slots', '4' ]);
ok($t->wait_health(20), 'engine with room for one sequence is up');

# six tokens (2.4 s) hold the one sequence long enough that the others
# arrive while it runs, however slowly a loaded box starts them
my @res = $t->many(3, 'POST', '/hold/v1/chat/completions',
    chat_body(max_tokens => 6), timeout => 30);
my %st;
$st{$_->{status}}++ for @res;
ok($st{200}, 'the request that fits runs');
ok($st{429}, 'the engine rejects the rest: 429 as a real status');
is(($st{200} // 0) + ($st{429} // 0), 3, 'nothing else happened');
my ($rej) = grep { $_->{status} == 429 } @res;
like($rej ? $rej->{json}{error}{message} : '', qr/queue is full/,
    'with the engine\'s message');
is($rej ? $rej->{json}{error}{type} : '', 'rate_limit_error',
    'typed rate_limit_error');

$t->stop;

done_testing;
