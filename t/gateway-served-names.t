#!/usr/bin/perl

# Several served model names, as vLLM's --served-model-name a b c: every
# name is accepted in "model" and listed by /v1/models, answers and
# metrics carry the first; kimi_served_model_name takes a list too.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(chat_body completion_body);

my $t = KimiTest->new(default => { text => 'one two' },
    engine_args => [ '--served-model-name', 'kimi-test', 'kimi',
                     'org/kimi-k2' ]);
$t->{server_conf} = <<'EOF';
        location = /metrics {
            kimi_metrics;
        }
        location /renamed/ {
            kimi_pass;
            kimi_served_model_name first second;
            rewrite ^/renamed(/.*)$ $1 break;
        }
EOF
$t->start;

my $r = $t->get('/v1/models');
is($r->{status}, 200, '/v1/models');
is_deeply([ map { $_->{id} } @{$r->{json}{data}} ],
    [ 'kimi-test', 'kimi', 'org/kimi-k2' ], 'lists every served name in order');
is($r->{json}{data}[2]{max_model_len}, 4096, 'each card has max_model_len');

$r = $t->get('/v1/models/kimi');
is($r->{status}, 200, '/v1/models/kimi: a served name');
is($r->{json}{id}, 'kimi', 'its card');
$r = $t->get('/v1/models/org/kimi-k2');
is($r->{json}{id}, 'org/kimi-k2', 'a name with a slash');
$r = $t->get('/v1/models/other');
is($r->{status}, 404, '/v1/models/other: 404');

for my $name ('kimi-test', 'kimi', 'org/kimi-k2') {
    $r = $t->post('/v1/chat/completions', chat_body(model => $name));
    is($r->{status}, 200, "chat with model \"$name\" is served");
    is($r->{json}{model}, 'kimi-test', 'the answer carries the first name');
}
$r = $t->post('/v1/completions', completion_body(model => 'kimi',
    prompt => 'hi', max_tokens => 2));
is($r->{json}{model}, 'kimi-test', 'completions too');

$r = $t->sse('/v1/chat/completions', chat_body(model => 'kimi',
    stream => JSON::PP::true));
is($r->{status}, 200, 'a stream for an alias');
is($r->{events}[0]{model}, 'kimi-test', 'its chunks carry the first name');

$r = $t->post('/v1/chat/completions', chat_body(model => 'kimi-tes'));
is($r->{status}, 404, 'a prefix of a name is not a name');
is($r->{json}{error}{code}, 'model_not_found', 'model_not_found');

ok(KimiTest::wait_for(5, sub {
    $t->get('/metrics')->{body}
        =~ /^vllm:request_success_total\{model_name="kimi-test",/m }),
    'metrics label the first name');
unlike($t->get('/metrics')->{body}, qr/model_name="kimi-test kimi/,
    'not the whole list');

# the gateway's own list replaces the engine's
$r = $t->get('/renamed/v1/models');
is_deeply([ map { $_->{id} } @{$r->{json}{data}} ], [ 'first', 'second' ],
    'kimi_served_model_name first second: both listed');
$r = $t->post('/renamed/v1/chat/completions', chat_body(model => 'second'));
is($r->{status}, 200, 'the second is served');
is($r->{json}{model}, 'first', 'answering with the first');
$r = $t->post('/renamed/v1/chat/completions', chat_body(model => 'kimi'));
is($r->{status}, 404, 'the engine\'s names are not served there');

$t->stop;

# engine: the names must fit the segment and have no spaces
my $out = `$t->{engine_bin} serve --backend replay --replay-script /dev/null --served-model-name a 'b c' --ipc-dir ${\ $t->dir}/bad 2>&1`;
like($out, qr/--served-model-name: "b c"/, 'a name with a space: refused');
$out = `$t->{engine_bin} serve --backend replay --replay-script /dev/null --served-model-name a ${\ ('x' x 130)} --ipc-dir ${\ $t->dir}/bad 2>&1`;
like($out, qr/fit 127 bytes/, 'names over the segment\'s field: refused');

done_testing();
