#!/usr/bin/perl

# API keys (conf/kimi-keys.conf): Bearer auth in the access phase, 401 in
# OpenAI's shape, keys reloaded with `nginx -s reload`, secrets never
# logged, and a keys file with mistakes refused with the file and line.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(chat_body);
use KimiConf;

my $t = KimiTest->new(default => { text => 'hi there' });
my $c = KimiConf->new($t, 'conf/kimi-keys.conf', keys => <<'EOF');
# id     secret                   budget
alice    sk-alice-0123456789      100000/1h
bob      sk-bob-abcdefghij
EOF

$c->start;

my $bearer = sub { (Authorization => "Bearer $_[0]") };

# --- refusals ---------------------------------------------------------------

my $r = $t->post('/v1/chat/completions', chat_body());
is($r->{status}, 401, 'no key is a 401');
is($r->{json}{error}{code}, 'invalid_api_key', '401 carries invalid_api_key');
is($r->{json}{error}{type}, 'invalid_request_error',
    '401 type is invalid_request_error');
ok(exists $r->{json}{error}{param} && !defined $r->{json}{error}{param},
    '401 has param null');
like($r->{json}{error}{message}, qr/Bearer/, 'message says how to send a key');
like($r->{headers}{'www-authenticate'} // '', qr/^Bearer/,
    '401 names the Bearer scheme');
like($r->{headers}{'content-type'} // '', qr{^application/json},
    '401 is JSON');

$r = $t->post('/v1/chat/completions', chat_body(),
    $bearer->('sk-alice-0123456788'));
is($r->{status}, 401, 'a wrong key is a 401');
like($r->{json}{error}{message}, qr/Incorrect API key/,
    'wrong key says so');

$r = $t->post('/v1/chat/completions', chat_body(),
    Authorization => 'Basic YWxpY2U6c2stYWxpY2U=');
is($r->{status}, 401, 'Basic credentials are not a Bearer key');

$r = $t->get('/v1/models', Authorization => 'Bearer ');
is($r->{status}, 401, 'an empty Bearer token is a 401');

# --- good keys ----------------------------------------------------------------

$r = $t->post('/v1/chat/completions', chat_body(max_tokens => 5),
    $bearer->('sk-alice-0123456789'));
is($r->{status}, 200, 'a good key gets through to the engine');
is($r->{json}{object}, 'chat.completion', 'and gets a completion');
is($r->{headers}{'x-ratelimit-limit-tokens'}, 100000,
    'x-ratelimit-limit-tokens is the key budget');

$r = $t->get('/v1/models', Authorization => 'bearer   sk-bob-abcdefghij  ');
is($r->{status}, 200, 'scheme is case-insensitive, spaces are trimmed');
ok(!exists $r->{headers}{'x-ratelimit-limit-tokens'},
    'a key without budget has no rate-limit headers');

$r = $t->get('/health');
is($r->{status}, 200, '/health stays open');

$r = $t->get('/metrics');
is($r->{status}, 200, '/metrics is open to localhost without a key');
like($r->{body}, qr/^kimi:api_key_rejections_total\{reason="missing"\} 3$/m,
    'missing-key refusals are counted');
like($r->{body}, qr/^kimi:api_key_rejections_total\{reason="invalid"\} 1$/m,
    'wrong-key refusals are counted');

# --- the log shows the id, never the secret -----------------------------------

ok(KimiTest::wait_for(5, sub {
    $t->read_file('kimi-billing.log') =~ /key=alice .*status=200/ }),
    'billing log names the key id');
my $logs = $t->read_file('kimi-billing.log') . $t->read_file('access.log')
    . $t->read_file('error.log');
unlike($logs, qr/sk-alice|sk-bob/, 'no secret in any log');

# --- reload: rotate alice, drop bob, add carol -------------------------------

KimiTest::write_file($t->dir . '/keys', <<'EOF');
alice    sk-alice-rotated-0001    100000/1h
carol    sk-carol-0123456789
EOF

$t->reload;

ok(KimiTest::wait_for(10, sub {
    $t->get('/v1/models', $bearer->('sk-carol-0123456789'))->{status} == 200
}), 'a key added to the file works after nginx -s reload');

ok(KimiTest::wait_for(10, sub {
    $t->get('/v1/models', $bearer->('sk-bob-abcdefghij'))->{status} == 401
}), 'a key removed from the file is refused after the reload');

is($t->get('/v1/models', $bearer->('sk-alice-0123456789'))->{status}, 401,
    'the rotated secret is refused');
is($t->get('/v1/models', $bearer->('sk-alice-rotated-0001'))->{status}, 200,
    'the new secret works');

# --- satisfy any: an allowed address needs no key ---------------------------

# a second nginx on the same engine is not needed: nginx -t proves the
# directives compose, the behaviour is in t/ops-auth-request.t
$t->stop;

# --- keys files with mistakes are refused at configuration time -------------

my $module = $t->{module};
$module = "$ENV{PWD}/$module" unless $module =~ m{^/};
my $d = $t->dir;

sub conf_with {
    my ($keys, $extra) = @_;
    KimiTest::write_file("$d/bad-keys", $keys);
    $extra //= 'kimi_token_budget_zone b:1m; kimi_token_budget b;';
    return "load_module $module;\nevents {}\nhttp {\n$extra\n"
        . "server { listen 127.0.0.1:" . KimiTest::free_port() . ";\n"
        . "location / { kimi_api_keys $d/bad-keys; } } }\n";
}

my @bad = (
    [ "a sk-aaaaaaaaaa\na sk-bbbbbbbbbb\n", qr/key id "a" appears twice/,
      'a duplicate id' ],
    [ "a sk-aaaaaaaaaa\nb sk-aaaaaaaaaa\n", qr/same secret/,
      'a duplicate secret' ],
    [ "a short\n", qr/bad-keys" line 1: the secret of key "a" must be 8/,
      'a short secret' ],
    [ "# c\n\na sk-aaaaaaaaaa 100/fortnight\n",
      qr/line 3: invalid budget "100\/fortnight"/, 'a bad budget period' ],
    [ "a sk-aaaaaaaaaa 0/1h\n", qr/invalid budget/, 'a zero budget' ],
    [ "a sk-aaaaaaaaaa 1000000000001/1h\n", qr/invalid budget/,
      'a budget over 10^12 tokens' ],
    [ "a sk-aaaaaaaaaa 100/1h extra\n", qr/expected ID SECRET/,
      'an extra field' ],
    [ "al ice sk-aaaaaaaaaa\n", qr/the secret of key "al" must be/,
      'an id with a space' ],
    [ "a/b sk-aaaaaaaaaa\n", qr/may hold only letters/, 'an id with a slash' ],
);

for my $case (@bad) {
    my ($rc, $out) = $c->nginx_t(conf_with($case->[0]));
    isnt($rc, 0, "nginx -t refuses $case->[2]");
    like($out, $case->[1], "and says what is wrong with $case->[2]");
}

my ($rc, $out) = $c->nginx_t(conf_with("a sk-aaaaaaaaaa 100/1h\n", ''));
isnt($rc, 0, 'budgets without a kimi_token_budget zone are refused');
like($out, qr/no "kimi_token_budget" zone applies/, 'and the error says so');

($rc, $out) = $c->nginx_t(conf_with("a sk-aaaaaaaaaa\n", ''));
is($rc, 0, 'keys without budgets need no zone') or diag($out);

($rc, $out) = $c->nginx_t(conf_with("a sk-aaaaaaaaaa 100/1h\n",
    'kimi_token_budget nozone;'));
isnt($rc, 0, 'a kimi_token_budget zone nobody defines is refused');
like($out, qr/zero size shared memory zone "nozone"/, 'naming the zone');

for my $z (['budgets', qr/invalid zone "budgets", expected NAME:SIZE/],
           ['budgets:lots', qr/invalid zone size "budgets:lots"/],
           ['budgets:4k', qr/zone "budgets:4k" is too small/])
{
    ($rc, $out) = $c->nginx_t(conf_with("a sk-aaaaaaaaaa\n",
        "kimi_token_budget_zone $z->[0];"));
    isnt($rc, 0, "kimi_token_budget_zone $z->[0] is refused");
    like($out, $z->[1], 'with a reason');
}

($rc, $out) = $c->nginx_t(conf_with("a sk-aaaaaaaaaa\n",
    'kimi_token_budget_zone b:1m; kimi_token_budget_zone b:1m;'));
isnt($rc, 0, 'a budget zone defined twice is refused');
like($out, qr/kimi_token_budget_zone "b" is already defined/, 'saying so');

($rc, $out) = $c->nginx_t(
    "load_module $module;\nevents {}\nhttp { server { listen 127.0.0.1:"
    . KimiTest::free_port() . "; location / { kimi_api_keys $d/nope; } } }\n");
isnt($rc, 0, 'a missing keys file is refused');
like($out, qr/nope" failed/, 'and the error names the file');

done_testing();
