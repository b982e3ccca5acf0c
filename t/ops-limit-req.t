#!/usr/bin/perl

# nginx's own limit_req in front of the kimi API (conf/kimi-limit-req.conf):
# a burst past the per-key rate gets an OpenAI-shaped 429 from nginx,
# before any kimi work; other keys and addresses within their rate pass.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(chat_body);
use KimiConf;

my $t = KimiTest->new(default => { text => 'fine' });
my $c = KimiConf->new($t, 'conf/kimi-limit-req.conf');
$c->start;

# 5 r/s per key with burst=10 nodelay: 11 pass at once, the 12th waits for
# the bucket; 16 back-to-back requests must see refusals
my @r = map { $t->get('/v1/models', Authorization => 'Bearer key-one') } 1 .. 16;
my @ok = grep { $_->{status} == 200 } @r;
my @limited = grep { $_->{status} == 429 } @r;

ok(@ok >= 10, scalar(@ok) . ' requests within the burst pass');
ok(@limited >= 1, scalar(@limited) . ' requests past the burst get 429');
is(scalar(@ok) + scalar(@limited), 16, 'nothing but 200 or 429');

my $l = $limited[0];
is($l->{json}{error}{code}, 'rate_limit_exceeded',
    'the 429 is OpenAI-shaped (code)');
is($l->{json}{error}{type}, 'requests', 'the 429 type is requests');
like($l->{headers}{'content-type'} // '', qr{^application/json},
    'the 429 is JSON');
is($l->{headers}{'retry-after'}, 1, 'the 429 carries Retry-After');

# the per-key zone is keyed by the header: another key is not limited
is($t->get('/v1/models', Authorization => 'Bearer key-two')->{status}, 200,
    'another key is within its own rate');

# chat requests are limited the same way, before the engine sees them
my @c = map { $t->post('/v1/chat/completions', chat_body(max_tokens => 1),
                       Authorization => 'Bearer key-one') } 1 .. 3;
ok((grep { $_->{status} == 429 } @c) >= 1,
   'chat requests of the limited key get 429 too');
like($t->read_file('error.log'), qr/limiting requests, excess: .* zone "kimi_per_key"/,
    'nginx logs the limit_req refusal');

$t->stop;

done_testing();
