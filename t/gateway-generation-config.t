#!/usr/bin/perl

# The model's generation_config.json as vLLM's --generation-config auto
# takes it: its sampling keys that differ from Hugging Face's defaults
# (here temperature 0 and max_new_tokens 5; top_k 50 and
# repetition_penalty 1 are the defaults and change nothing) become the
# defaults of requests that do not say, and max_new_tokens caps every
# request; `kimi_generation_config vllm` keeps OpenAI's defaults.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(chat_body completion_body);

my $true = JSON::PP::true;

sub model_dir {
    my ($t) = @_;
    my $dir = $t->dir . '/model';
    system($t->{engine_bin}, 'gen-tiny-model', '--out', $dir) == 0
        or BAIL_OUT('gen-tiny-model failed');
    my $path = "$dir/generation_config.json";
    my $gen = do {
        open(my $fh, '<', $path) or die "$path: $!";
        local $/;
        decode_json(<$fh>);
    };
    $gen->{temperature} = 0.0;
    $gen->{max_new_tokens} = 5;
    $gen->{top_k} = 50;
    $gen->{repetition_penalty} = 1.0;
    KimiTest::write_file($path, encode_json($gen));
    return $dir;
}

sub text_of { $_[0]{json}{choices}[0]{message}{content} // '' }

# ---- auto (the default) ---------------------------------------------------------

my $t = KimiTest->new(workers => 1);
my $model = model_dir($t);
$t->{engine_args} = [ '--backend', 'cpu', '--model', $model, '--threads', 1,
    '--cpu-kv-cache-bytes', '32M' ];
$t->start;

my $a = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    seed => 1, ignore_eos => $true));
my $b = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    seed => 2, ignore_eos => $true));
my $g = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    temperature => 0, max_tokens => 5, ignore_eos => $true));
is($a->{status}, 200, 'a chat without sampling parameters: 200');
is($a->{json}{usage}{completion_tokens}, 5,
    'max_new_tokens 5 is its max_tokens');
is($a->{json}{choices}[0]{finish_reason}, 'length', 'cut there');
is(text_of($a), text_of($b), 'temperature 0 from the file: two seeds, one '
    . 'text');
is(text_of($a), text_of($g), 'the greedy text');

my $s1 = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    temperature => 1.0, seed => 1, ignore_eos => $true));
my $s2 = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    temperature => 1.0, seed => 2, ignore_eos => $true));
isnt(text_of($s1), text_of($s2), 'a request\'s own temperature wins');

my $r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 20, ignore_eos => $true));
is($r->{json}{usage}{completion_tokens}, 5,
    'max_new_tokens caps a larger max_tokens');
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 3, ignore_eos => $true));
is($r->{json}{usage}{completion_tokens}, 3, 'and keeps a smaller one');
$r = $t->post('/v1/completions', completion_body(prompt => 'hello',
    ignore_eos => $true));
is($r->{json}{usage}{completion_tokens}, 5,
    'completions: min(16, max_new_tokens)');

my $log = $t->read_file('error.log');
like($log, qr/generation_config\.json defaults \(as vLLM's --generation-config auto\): temperature 0\.000 max_new_tokens 5/,
    'the text stack\'s load line says what the file set');
unlike($log, qr/defaults[^\n]*(top_k|repetition_penalty)/,
    'and not the keys at their Hugging Face defaults');
$t->stop;

# ---- vllm: OpenAI's defaults --------------------------------------------------------

$t = KimiTest->new(workers => 1, http_conf => 'kimi_generation_config vllm;');
$model = model_dir($t);
$t->{engine_args} = [ '--backend', 'cpu', '--model', $model, '--threads', 1,
    '--cpu-kv-cache-bytes', '32M' ];
$t->start;
$a = $t->post('/v1/chat/completions', chat_body(content => 'hi', seed => 1,
    max_tokens => 8, ignore_eos => $true));
$b = $t->post('/v1/chat/completions', chat_body(content => 'hi', seed => 2,
    max_tokens => 8, ignore_eos => $true));
is($a->{json}{usage}{completion_tokens}, 8, 'vllm: no max_new_tokens cap');
isnt(text_of($a), text_of($b), 'vllm: temperature 1, two seeds, two texts');
unlike($t->read_file('error.log'), qr/generation_config\.json defaults/,
    'vllm: the file is not read');
$t->stop;

# ---- vllm with kimi_override_generation_config -----------------------------------

$t = KimiTest->new(workers => 1, http_conf => 'kimi_generation_config vllm; '
    . q<kimi_override_generation_config '{"temperature": 0, "top_k": 50, >
    . q<"max_new_tokens": 4}';>);
$model = model_dir($t);
$t->{engine_args} = [ '--backend', 'cpu', '--model', $model, '--threads', 1,
    '--cpu-kv-cache-bytes', '32M' ];
$t->start;
$a = $t->post('/v1/chat/completions', chat_body(content => 'hi', seed => 1,
    ignore_eos => $true));
$b = $t->post('/v1/chat/completions', chat_body(content => 'hi', seed => 2,
    ignore_eos => $true));
is($a->{json}{usage}{completion_tokens}, 4,
    'override: its max_new_tokens caps (the file\'s 5 is not read)');
is(text_of($a), text_of($b), 'override: its temperature 0, two seeds, one '
    . 'text');
like($t->read_file('error.log'), qr/generation defaults \(as vLLM's --generation-config vllm with --override-generation-config\): temperature 0\.000 top_k 50 max_new_tokens 4/,
    'override: the load line lists its keys, top_k 50 too (an override is '
    . 'taken as given)');
$t->stop;

# ---- what the directive refuses ------------------------------------------------------

my $module = $t->{module};
$module = "$ENV{PWD}/$module" unless $module =~ m{^/};
my $d = $t->dir;
for my $bad (q<'not json'>, q<'[1, 2]'>, q<'{"temperature": }'>) {
    KimiTest::write_file("$d/t.conf", "load_module $module;\nevents {}\n"
        . "http { kimi_override_generation_config $bad; }\n");
    my $out = `$t->{nginx_bin} -t -p $d/ -c $d/t.conf -e $d/t.log 2>&1`;
    isnt($? >> 8, 0, "nginx -t refuses kimi_override_generation_config $bad");
    like($out, qr/must be a JSON object/, 'saying what it takes');
}

done_testing();
