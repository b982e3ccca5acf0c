#!/usr/bin/perl

# kimi-bench against a scripted SSE server whose delays we know: the
# reported TTFT, TPOT and ITL must match them within 5%, the result block
# must read like vLLM's, and every kind of failure (refused, HTTP error,
# error event, cut stream, a server that never answers) must be counted,
# never hang the run.  The server is part of this file (core Perl only),
# so the check does not depend on our own gateway; t/bench-replay.t runs
# the same checks through nginx and kimi-engine.

use strict;
use warnings;

use Test::More;
use IO::Socket::INET;
use IO::Select;
use File::Temp qw(tempdir);
use JSON::PP;
use POSIX ();
use Time::HiRes qw(time);
use FindBin;
use lib "$FindBin::Bin/lib";
use KimiTest qw(python_modules);

my $build = $ENV{BUILD} // 'build';
my $bench = "$build/kimi-bench";

plan skip_all => "$bench is not built" unless -x $bench;

my ($tokdir) = grep { -f "$_/tiktoken.model" }
    ($ENV{KIMI_TOKENIZER} // (), '../shared/kimi-k2', '/work/shared/kimi-k2');
plan skip_all => 'no tokenizer dir (set KIMI_TOKENIZER)' unless $tokdir;

my $dir = tempdir('kimi-bench-t-XXXXXX', TMPDIR => 1,
    CLEANUP => !$ENV{TEST_KIMI_LEAVE});

# ---- the scripted server ---------------------------------------------------

# Modes: ok; mixed (request index % 3: 0 -> HTTP 500, 1 -> error event
# after 2 tokens, 2 -> ok); close (cut after 2 tokens); hang (headers never
# sent).  Tokens leave at absolute times first + k * delay, so sleep
# overshoot does not accumulate into the mean.
sub fake_server {
    my (%o) = @_;

    my $ls = IO::Socket::INET->new(Listen => 1024, LocalAddr => '127.0.0.1',
        LocalPort => 0, ReuseAddr => 1, Proto => 'tcp')
        or die "listen: $!";
    my $port = $ls->sockport;
    my $stats = "$dir/fake-$port.stats";

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        # the child must never return into the test script
        eval { fake_loop($ls, $stats, %o) };
        print STDERR "# fake server: $@" if $@;
        POSIX::_exit($@ ? 1 : 0);
    }
    close $ls;

    return { pid => $pid, port => $port, stats => $stats };
}

sub fake_stop {
    my ($s) = @_;

    kill 'TERM', $s->{pid};
    waitpid $s->{pid}, 0;

    open my $fh, '<', $s->{stats} or return {};
    my %st = map { /^(\w+)=(.*)$/ ? ($1, $2) : () } <$fh>;
    return \%st;
}

sub fake_loop {
    my ($ls, $stats, %o) = @_;
    my $mode = $o{mode} // 'ok';
    my $ttft = ($o{ttft_ms} // 50) / 1000;
    my $delay = ($o{delay_ms} // 20) / 1000;
    my (%c, $stop);
    my %st = (accepts => 0, requests => 0, max_active => 0, auth => 0);
    my $active = 0;

    $SIG{TERM} = sub { $stop = 1 };
    $SIG{PIPE} = 'IGNORE';          # the client may close mid-stream
    my $sel = IO::Select->new($ls);

    my $chunk = sub {
        my ($k, $data) = @_;
        my $b = "data: $data\n\n";
        syswrite($k->{sock}, sprintf("%x\r\n%s\r\n", length $b, $b));
    };
    my $close = sub {
        my ($k) = @_;
        $active-- if $k->{streaming};
        $sel->remove($k->{sock});
        close $k->{sock};
        delete $c{$k->{fd}};
    };

    until ($stop) {
        my $now = time;
        my $wait = 0.05;
        for my $k (values %c) {
            next unless $k->{streaming};
            my $w = $k->{due} - $now;
            $wait = $w if $w < $wait;
        }
        $wait = 0 if $wait < 0;

        for my $s ($sel->can_read($wait)) {
            if ($s == $ls) {
                my $a = $ls->accept or next;
                $st{accepts}++;
                $sel->add($a);
                $c{fileno $a} = { sock => $a, fd => fileno $a, in => '' };
                next;
            }

            my $k = $c{fileno $s} or next;
            my $n = sysread($s, my $buf, 65536);
            if (!$n) {
                $close->($k);
                next;
            }
            $k->{in} .= $buf;

            next unless $k->{in} =~ /\r\n\r\n/;
            my ($head, $body) = split /\r\n\r\n/, $k->{in}, 2;
            my ($len) = $head =~ /^content-length:\s*(\d+)/mi;
            next unless defined $len && length $body >= $len;
            $k->{in} = '';

            my ($path) = $head =~ /^POST (\S+)/;
            my ($idx) = $head =~ /^x-request-id: \S*?(\d+)\s*$/mi;
            $st{auth}++ if $head =~ /^authorization: Bearer k123\r?$/mi;
            $st{extra}++ if $head =~ /^x-bench-extra: 0\.3\.3\r?$/mi
                && $head =~ /^x-tenant: blue\r?$/mi;
            my $req = decode_json(substr $body, 0, $len);
            $st{requests}++;
            $st{sampling} = join(',', map { "$_=" . ($req->{$_} // 'none') }
                                      qw(temperature top_p top_k min_p));
            $st{logprobs} = $req->{logprobs} // 'null' if $path !~ /chat/;
            ($st{id_prefix}) = $head =~ /^x-request-id: (\S*?)\d+\s*$/mi;

            my $how = $mode;
            if ($mode eq 'mixed') {
                $how = (qw(http500 error ok))[($idx // 0) % 3];
            }
            next if $how eq 'hang';

            if ($how eq 'http500') {
                my $e = '{"error":{"message":"scripted failure",'
                      . '"type":"server_error","code":500}}';
                syswrite($s, "HTTP/1.1 500 Internal Server Error\r\n"
                    . "Content-Type: application/json\r\n"
                    . "Content-Length: " . length($e) . "\r\n\r\n$e");
                next;
            }

            syswrite($s, "HTTP/1.1 200 OK\r\n"
                . "Content-Type: text/event-stream\r\n"
                . "Transfer-Encoding: chunked\r\n\r\n");

            $k->{how} = $how;
            $k->{chat} = $path =~ /chat/ ? 1 : 0;
            $k->{left} = $req->{max_tokens} // $req->{max_completion_tokens};
            $k->{sent} = 0;
            $k->{first} = time + $ttft;
            $k->{due} = $k->{first};
            $k->{streaming} = 1;
            $active++;
            $st{max_active} = $active if $active > $st{max_active};
        }

        $now = time;
        for my $k (values %c) {
            next unless $k->{streaming} && $k->{due} <= $now;

            if ($k->{how} ne 'ok' && $k->{sent} == 2) {
                if ($k->{how} eq 'error') {
                    $chunk->($k, '{"error":{"message":"scripted error event",'
                        . '"type":"server_error","code":500}}');
                    $chunk->($k, '[DONE]');
                    syswrite($k->{sock}, "0\r\n\r\n");
                    $k->{streaming} = 0;
                    $active--;
                } else {
                    $close->($k);                   # cut mid-stream
                }
                next;
            }

            my $last = $k->{left} == 1;
            my $fin = $last ? '"length"' : 'null';
            my $tok = $k->{chat} ? '"delta":{"content":"tok "}'
                                 : '"text":"tok "';
            $chunk->($k, sprintf('{"object":"%s","choices":[{"index":0,'
                . '%s,"finish_reason":%s}]}',
                $k->{chat} ? 'chat.completion.chunk' : 'text_completion',
                $tok, $fin));
            $k->{sent}++;
            $k->{left}--;
            $k->{due} = $k->{first} + $k->{sent} * $delay;

            if ($last) {
                $chunk->($k, '{"choices":[],"usage":{"completion_tokens":'
                    . "$k->{sent}}}");
                $chunk->($k, '[DONE]');
                syswrite($k->{sock}, "0\r\n\r\n");
                $k->{streaming} = 0;
                $active--;
            }
        }
    }

    open my $fh, '>', $stats or return;
    print $fh "$_=$st{$_}\n" for sort keys %st;
    close $fh;
}

# ---- running kimi-bench ----------------------------------------------------

my $runs = 0;
my $all_out = '';

sub bench {
    my ($port, @args) = @_;
    my $json = "$dir/result-" . ++$runs . '.json';

    my @cmd = ($bench, '--model', 'fake', '--tokenizer', $tokdir,
        '--port', $port, '--random-input-len', 32, '--random-output-len', 25,
        '--ready-check-timeout-sec', 0, '--disable-tqdm', '--timeout', 60,
        '--save-result', '--result-filename', $json, @args);

    my $t0 = time;
    my $out = `@cmd 2>&1`;
    my $rc = $? >> 8;
    my $r = -f $json ? decode_json(do { local (@ARGV, $/) = $json; <> }) : {};
    $all_out .= $out;

    return { out => $out, rc => $rc, r => $r, wall => time - $t0 };
}

sub within {
    my ($got, $want, $rel) = @_;
    return defined $got && abs($got - $want) <= $want * $rel;
}

# ---- timing against known delays -------------------------------------------

my $s = fake_server(ttft_ms => 60, delay_ms => 20);
my $b = bench($s->{port}, '--num-prompts', 8);
my $st = fake_stop($s);
my $r = $b->{r};

is($b->{rc}, 0, 'run against the scripted server exits 0')
    or diag $b->{out};
is($r->{completed}, 8, 'all 8 requests succeed');
is($r->{failed}, 0, 'none fails');
is($r->{total_output_tokens}, 200, 'output tokens from usage: 8 x 25');
is($r->{total_input_tokens}, 256, 'input tokens: 8 x 32, exact');
ok(within($r->{mean_tpot_ms}, 20, 0.05), 'mean TPOT within 5% of 20 ms')
    or diag "mean TPOT $r->{mean_tpot_ms}";
ok(within($r->{median_itl_ms}, 20, 0.05), 'median ITL within 5% of 20 ms')
    or diag "median ITL $r->{median_itl_ms}";
ok(within($r->{mean_itl_ms}, 20, 0.05), 'mean ITL within 5% of 20 ms')
    or diag "mean ITL $r->{mean_itl_ms}";
ok($r->{mean_ttft_ms} >= 60 && $r->{mean_ttft_ms} < 100,
    'TTFT is the scripted 60 ms plus little')
    or diag "mean TTFT $r->{mean_ttft_ms}";
ok($r->{duration} > 0.54 && $r->{duration} < 1.0,
    'duration: 60 ms + 24 x 20 ms, all in parallel')
    or diag "duration $r->{duration}";
is($st->{max_active}, 8, 'request rate inf sends all 8 at once');
is($st->{sampling}, 'temperature=0,top_p=none,top_k=none,min_p=none',
    'greedy by default, no other sampling field sent');

{
    my $s2 = fake_server(ttft_ms => 5, delay_ms => 1);
    my $b2 = bench($s2->{port}, '--num-prompts', 2, '--temperature', 0.7,
        '--top-p', 0.9, '--top-k', 40, '--min-p', 0.05);
    my $st2 = fake_stop($s2);
    is($st2->{sampling}, 'temperature=0.7,top_p=0.9,top_k=40,min_p=0.05',
        '--temperature, --top-p, --top-k, --min-p sent as given')
        or diag $b2->{out};
    is($st2->{logprobs}, 'null', 'completions: logprobs null by default');
    like($st2->{id_prefix}, qr/^bench-[0-9a-f]{8}-$/, 'request ids bench-RANDOM-N by default');

    my $s3 = fake_server(ttft_ms => 5, delay_ms => 1);
    my $b3 = bench($s3->{port}, '--num-prompts', 2, '--logprobs', 3,
        '--request-id-prefix', 'run-a-', '--trust-remote-code');
    my $st3 = fake_stop($s3);
    is($b3->{rc}, 0, '--logprobs, --request-id-prefix and --trust-remote-code run')
        or diag $b3->{out};
    is($st3->{logprobs}, 3, '--logprobs 3 sent as the completions\' logprobs');
    is($st3->{id_prefix}, 'run-a-', '--request-id-prefix names the request ids');
}

like($b->{out}, qr/^============ Serving Benchmark Result ============$/m,
    'result block header as vLLM prints it');
my @labels = ('Successful requests:', 'Failed requests:',
    'Benchmark duration (s):', 'Total input tokens:',
    'Total generated tokens:', 'Request throughput (req/s):',
    'Output token throughput (tok/s):',
    'Peak output token throughput (tok/s):', 'Peak concurrent requests:',
    'Total Token throughput (tok/s):', 'Mean TTFT (ms):', 'Median TTFT (ms):',
    'P99 TTFT (ms):', 'Mean TPOT (ms):', 'Median TPOT (ms):',
    'P99 TPOT (ms):', 'Mean ITL (ms):', 'Median ITL (ms):', 'P99 ITL (ms):');
my @lines = grep { /^\S.*:\s/ } split /\n/, $b->{out};
my @got = map { /^(.{40}) / ? do { (my $l = $1) =~ s/\s+$//; $l } : () }
    grep { /^(Successful|Failed|Benchmark|Total|Request|Output|Peak|Mean|Median|P99)/ }
    @lines;
is_deeply(\@got, \@labels, 'the block has vLLM\'s lines, in order, '
    . 'labels padded to 40');
like($b->{out}, qr/^-{15}Time to First Token-{16}$/m,
    'section header centered like Python\'s ^50');
like($b->{out}, qr/^-----Time per Output Token \(excl\. 1st token\)------$/m,
    'TPOT section header');
unlike($b->{out}, qr/End-to-end Latency/, 'E2EL only when asked');
like($b->{out}, qr/^Mean TPOT \(ms\):\s{26}\d+\.\d\d\s*$/m,
    'values printed with 2 decimals');
like($b->{out}, qr/^Client CPU \(kimi-bench, one thread\): .* of one core/m,
    'the client reports its own CPU use');
for my $k (qw(date backend model_id tokenizer_id num_prompts request_rate
    burstiness max_concurrency duration completed failed total_input_tokens
    total_output_tokens request_throughput output_throughput
    total_token_throughput max_output_tokens_per_s max_concurrent_requests
    mean_ttft_ms median_ttft_ms std_ttft_ms p99_ttft_ms mean_tpot_ms
    p99_tpot_ms mean_itl_ms median_itl_ms std_itl_ms p99_itl_ms))
{
    ok(exists $r->{$k}, "result JSON has vLLM's key $k") or last;
}
is($r->{request_rate}, 'inf', 'request_rate inf is the string "inf"');

# ---- chat endpoint, E2EL, other percentiles --------------------------------

$s = fake_server(ttft_ms => 30, delay_ms => 15);
$b = bench($s->{port}, '--num-prompts', 4, '--endpoint',
    '/v1/chat/completions', '--backend', 'openai-chat',
    '--percentile-metrics', 'ttft,tpot,itl,e2el',
    '--metric-percentiles', '50,90,99.9', '--save-detailed');
fake_stop($s);
$r = $b->{r};

is($r->{completed}, 4, 'chat: all requests succeed');
ok(within($r->{mean_tpot_ms}, 15, 0.05), 'chat: mean TPOT within 5% of 15 ms')
    or diag "mean TPOT $r->{mean_tpot_ms}";
like($b->{out}, qr/^P99\.9 ITL \(ms\):/m, 'fractional percentile label');
like($b->{out}, qr/^Median E2EL \(ms\):/m, 'E2EL printed when asked');
ok(within($r->{mean_e2el_ms}, 30 + 24 * 15, 0.1),
    'E2EL = TTFT + 24 gaps') or diag "E2EL $r->{mean_e2el_ms}";
ok(exists $r->{p90_ttft_ms} && exists $r->{'p99.9_tpot_ms'},
    'JSON percentile keys follow vLLM (p90, p99.9)');
is(scalar @{$r->{itls}[0] // []}, 24, '--save-detailed keeps 24 ITLs a request');
is($r->{generated_texts}[0], 'tok ' x 25, 'generated text is the deltas');

# ---- traffic shape ----------------------------------------------------------

$s = fake_server(ttft_ms => 5, delay_ms => 5);
$b = bench($s->{port}, '--num-prompts', 10, '--request-rate', 20,
    '--random-output-len', 3, '--base-url', "http://127.0.0.1:$s->{port}/");
fake_stop($s);
ok($b->{r}{duration} >= 0.5 && $b->{r}{duration} < 1.5,
    'rate 20 req/s: the 10th request leaves at 0.5 s (vLLM rescales)')
    or diag "duration $b->{r}{duration}";
like($b->{out}, qr/^Request rate configured \(RPS\):\s+20\.00\s*$/m,
    'configured rate line for a finite rate');
is($b->{r}{completed}, 10, '--base-url with a trailing slash works');

$s = fake_server(ttft_ms => 5, delay_ms => 5);
$b = bench($s->{port}, '--num-prompts', 6, '--max-concurrency', 2,
    '--random-output-len', 10, '--api-key', 'k123');
$st = fake_stop($s);
is($b->{r}{completed}, 6, 'max-concurrency run completes');
is($st->{max_active}, 2, 'at most 2 streams in flight');
is($st->{accepts}, 2, 'keep-alive: 6 requests over 2 connections');
is($st->{auth}, 6, '--api-key sent as a Bearer token on every request');
like($b->{out}, qr/^Maximum request concurrency:\s+2\s*$/m,
    'concurrency line printed');

# ---- failures ---------------------------------------------------------------

$s = fake_server(mode => 'mixed', ttft_ms => 5, delay_ms => 5);
$b = bench($s->{port}, '--num-prompts', 9);
fake_stop($s);
is($b->{r}{completed}, 3, 'mixed: the 3 clean requests succeed')
    or diag $b->{out};
is($b->{r}{failed}, 6, 'mixed: HTTP 500 and error events are failures');
like($b->{out}, qr/HTTP 500: .*scripted failure/, 'HTTP error reported');
like($b->{out}, qr/error event: scripted error event/,
    'error event reported with its message');
is($b->{rc}, 0, 'some successes: exit 0');

$s = fake_server(mode => 'close', ttft_ms => 5, delay_ms => 5);
$b = bench($s->{port}, '--num-prompts', 3);
fake_stop($s);
is($b->{r}{failed}, 3, 'streams cut mid-response fail');
like($b->{out}, qr/connection closed mid-response/, 'and say so');
is($b->{rc}, 1, 'all failed: exit 1');

my $probe = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
    LocalPort => 0) or die;
my $dead = $probe->sockport;
close $probe;                         # nothing listens there now
$b = bench($dead, '--num-prompts', 4);
is($b->{r}{failed}, 4, 'connection refused: every request fails');
like($b->{out}, qr/Error 0: connection refused/, 'refusal is named');

$s = fake_server(mode => 'hang');
$b = bench($s->{port}, '--num-prompts', 5, '--timeout', 1.5);
fake_stop($s);
ok($b->{wall} < 5, 'a server that never answers cannot hang the run')
    or diag "wall $b->{wall}";
is($b->{r}{failed}, 5, 'the unanswered requests fail');
like($b->{out}, qr/timeout: the run reached --timeout/, 'as timeouts');

$s = fake_server(mode => 'hang');
$b = bench($s->{port}, '--num-prompts', 2, '--request-timeout', 0.5,
    '--timeout', 10);
fake_stop($s);
ok($b->{wall} < 3, '--request-timeout ends each request');
like($b->{out}, qr/no complete response in --request-timeout/,
    'and names the per-request limit');

my $bad = `$bench --model m --tokenizer $tokdir --request-rate 0 2>&1`;
is($? >> 8, 2, 'bad flag value: exit 2');
like($bad, qr/--request-rate must be > 0/, 'with a clear message');

# ---- prompt lengths against the real tiktoken ------------------------------------

SKIP: {
    skip 'no python3, or tiktoken is not installable', 2
        unless python_modules('tiktoken');

    # Kimi's encoding built from its files as tokenization_kimi.py does
    # (kimi-k2-facts.md section 5); every prompt must encode to exactly
    # the prompt_len kimi-bench reports
    open my $py, '>', "$dir/check.py" or die;
    print $py <<'PY';
import base64, json, sys, tiktoken
d = sys.argv[1]
ranks = {}
for line in open(d + '/tiktoken.model'):
    b, r = line.split()
    ranks[base64.b64decode(b)] = int(r)
pat = '|'.join([
    r"[\p{Han}]+",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}", r" ?[^\s\p{L}\p{N}]+[\r\n]*", r"\s*[\r\n]+", r"\s+(?!\S)", r"\s+"])
cfg = json.load(open(d + '/tokenizer_config.json'))
named = {int(k): v['content'] for k, v in cfg['added_tokens_decoder'].items()}
special = {named.get(i, '<|reserved_token_%d|>' % i): i
           for i in range(len(ranks), len(ranks) + 256)}
enc = tiktoken.Encoding('kimi', pat_str=pat, mergeable_ranks=ranks,
                        special_tokens=special)
bad = 0
prompts = json.load(open(sys.argv[2]))
for p in prompts:
    n = len(enc.encode(p['prompt'], allowed_special='all'))
    if n != p['prompt_len']:
        bad += 1
        print('mismatch', n, p['prompt_len'])
print('checked', len(prompts), 'bad', bad)
PY
    close $py;

    bench($dead, '--num-prompts', 12, '--random-input-len', 300,
        '--random-range-ratio', 0.5, '--random-prefix-len', 20, '--seed', 7,
        '--dump-prompts', "$dir/prompts.json");
    my $check = `python3 $dir/check.py $tokdir $dir/prompts.json 2>&1`;
    like($check, qr/^checked 12 bad 0$/m,
        'tiktoken counts every prompt exactly as kimi-bench reports')
        or diag $check;
    my $p = decode_json(do { local (@ARGV, $/) = "$dir/prompts.json"; <> });
    ok(!grep({ $_->{prompt_len} < 20 + 150 || $_->{prompt_len} > 20 + 450 }
        @$p), 'lengths within prefix + [L(1-r), L(1+r)]');
}

# ---- the same prompts as vLLM for the same seed -------------------------------

# $dir/vllm_NAME.py: a Python model of one of vLLM's samplers
sub write_vllm {
    my ($name, $src) = @_;
    open my $py, '>', "$dir/vllm_$name.py" or die;
    print $py $src;
    close $py;
}

# What the vLLM references share: Kimi's tiktoken encoding as check.py
# builds it (argv: check.py, the tokenizer dir, then the reference's own),
# and vLLM's gen_prompt_decode_to_target_len: decode, re-encode, cut or pad
# (pad(k) gives k ids) until the target length, 10 tries.
sub write_vllm_common {
    write_vllm('common', <<'PY');
import sys
check_py, tokdir, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
_argv, sys.argv = sys.argv, [check_py, tokdir]
_g = {}
exec(open(check_py).read().split('bad = 0')[0], _g)
enc, sys.argv = _g['enc'], _argv
def to_length(seq, target, pad):
    tries = 10
    while True:
        text = enc.decode(seq)
        seq = enc.encode(text, allowed_special='all')
        if tries <= 0 or len(seq) == target:
            return text, seq
        if len(seq) < target:
            seq = seq + pad(target - len(seq))
        else:
            seq = seq[:target]
        tries -= 1
PY
}

# kimi-bench's requests (its --dump-prompts) against a vLLM reference's
# (vllm_SCRIPT.py run with check.py, the tokenizer dir, then @ref_args):
# n of them both ways, and the same prompts and lengths.
sub same_as_vllm {
    my ($n, $what, $script, $ref_args, @bench_args) = @_;
    unlink "$dir/cmp.json";
    my $r = bench($dead, @bench_args, '--num-prompts', $n, '--dump-prompts', "$dir/cmp.json");
    my $ref = `python3 $dir/vllm_$script.py $dir/check.py $tokdir @$ref_args 2>&1`;
    my $ours = eval { decode_json(do { local (@ARGV, $/) = "$dir/cmp.json"; <> }) };
    my $want = eval { decode_json($ref) };
    ok($want && @$want == $n && $ours && @$ours == $n, "$what: $n requests both ways")
        or diag substr($ref . ($r->{out} // ''), 0, 2000);
    is_deeply($ours, $want // [], "$what: vLLM's prompts and lengths");
}

SKIP: {
    skip 'no python3, or tiktoken and numpy are not installable', 2
        unless python_modules('tiktoken', 'numpy');

    # vLLM's RandomDataset, written out from its description: numpy's
    # default_rng(seed); all input lengths, all output lengths, all offsets,
    # the prefix (allowed ids), then per prompt a run of consecutive allowed
    # ids decoded and re-encoded until its length is the target, short ones
    # padded with ids below the vocabulary size drawn from the same rng.
    # Kimi's tokenizer is tiktoken built as check.py builds it.
    write_vllm_common();
    write_vllm('random', <<'PY');
import json, sys
import numpy as np
from vllm_common import enc, rest, to_length, tokdir
cfg = json.load(open(tokdir + '/tokenizer_config.json'))
by_name = {v['content']: int(k) for k, v in cfg['added_tokens_decoder'].items()}
names = [cfg.get(k) for k in ('bos_token', 'eos_token', 'unk_token', 'pad_token')]
names += cfg.get('additional_special_tokens', [])
special = {by_name[n] for n in names if isinstance(n, str) and n in by_name}
seed, n, in_len, out_len, ratio, prefix_len = (int(rest[0]), int(rest[1]),
    int(rest[2]), int(rest[3]), float(rest[4]), int(rest[5]))
vocab = enc.n_vocab
allowed = [t for t in range(vocab) if t not in special]
rng = np.random.default_rng(seed)
import math
lo, hi = math.floor(in_len * (1 - ratio)), math.ceil(in_len * (1 + ratio))
olo = max(math.floor(out_len * (1 - ratio)), 1)
ohi = max(math.ceil(out_len * (1 + ratio)), 1)
ins = rng.integers(lo, hi + 1, size=n)
outs = rng.integers(olo, ohi + 1, size=n)
offs = rng.integers(0, vocab, size=n)
prefix = [allowed[k] for k in rng.integers(0, len(allowed), size=prefix_len)] if prefix_len else []
res = []
for i in range(n):
    seq = prefix + [allowed[(int(offs[i]) + i + j) % len(allowed)] for j in range(int(ins[i]))]
    text, seq = to_length(seq, prefix_len + int(ins[i]),
        lambda k: [int(x) for x in rng.integers(0, vocab, size=k)])
    res.append({'prompt': text, 'prompt_len': len(seq), 'output_len': int(outs[i])})
json.dump(res, sys.stdout)
PY

    bench($dead, '--num-prompts', 16, '--random-input-len', 200,
        '--random-output-len', 40, '--random-range-ratio', 0.3,
        '--random-prefix-len', 12, '--seed', 11,
        '--dump-prompts', "$dir/ours.json");
    my $ref = `python3 $dir/vllm_random.py $dir/check.py $tokdir 11 16 200 40 0.3 12 2>&1`;
    my $ours = decode_json(do { local (@ARGV, $/) = "$dir/ours.json"; <> });
    my $want = eval { decode_json($ref) };
    ok($want && @$want == 16, 'the vLLM reference made 16 prompts')
        or diag substr($ref, 0, 2000);
    is_deeply($ours, $want // [], 'kimi-bench --seed 11 gives vLLM\'s prompts,'
        . ' token counts and output lengths, all 16');
}

# ---- prefix_repetition: the same prompts as vLLM for the same seed -----------

SKIP: {
    skip 'no python3, or tiktoken and numpy are not installable', 4
        unless python_modules('tiktoken', 'numpy');

    # vLLM's PrefixRepetitionRandomDataset, written out from its
    # description: random.seed and np.random.seed (numpy's legacy global
    # generator); per prefix np.random.randint ids decoded and re-encoded to
    # the length (padding from the same generator), then that prefix with
    # each of num_prompts // num_prefixes suffixes made the same way; the
    # prompt is the text of prefix + suffix ids, prompt_len their count;
    # random.shuffle at the end.
    write_vllm_common();
    write_vllm('prefix_rep', <<'PY');
import json, random, sys
import numpy as np
from vllm_common import enc, rest, to_length, tokdir
seed, n, num_prefixes, prefix_len, suffix_len, out_len, shuffle = map(int, rest)
random.seed(seed)
np.random.seed(seed)
vocab = enc.n_vocab
def draw(k):
    return np.random.randint(0, vocab, size=k).tolist()
def exact(length):
    return to_length(draw(length), length, draw)[1]
res = []
for _ in range(num_prefixes):
    prefix = exact(prefix_len)
    for _ in range(n // num_prefixes):
        both = prefix + exact(suffix_len)
        res.append({'prompt': enc.decode(both), 'prompt_len': len(both),
                    'output_len': out_len})
if shuffle:
    random.shuffle(res)
json.dump(res, sys.stdout)
PY

    for my $case ([7, 3, 20, 15, 9, 1, []], [10, 2, 33, 0, 5, 0, ['--disable-shuffle']]) {
        my ($seed, $np, $pl, $sl, $ol, $shuffle, $extra) = @$case;
        my $n = 11;
        unlink "$dir/pr.json";
        bench($dead, '--dataset-name', 'prefix_repetition', '--num-prompts', $n,
            '--prefix-repetition-num-prefixes', $np, '--prefix-repetition-prefix-len', $pl,
            '--prefix-repetition-suffix-len', $sl, '--prefix-repetition-output-len', $ol,
            '--seed', $seed, @$extra, '--dump-prompts', "$dir/pr.json");
        my $ref = `python3 $dir/vllm_prefix_rep.py $dir/check.py $tokdir $seed $n $np $pl $sl $ol $shuffle 2>&1`;
        my $ours = eval { decode_json(do { local (@ARGV, $/) = "$dir/pr.json"; <> }) };
        my $want = eval { decode_json($ref) };
        my $count = int($n / $np) * $np;
        ok($want && @$want == $count && $ours && @$ours == $count,
            "prefix_repetition seed $seed: $count prompts ($n // $np prefixes x $np) both ways")
            or diag substr($ref, 0, 2000);
        is_deeply($ours, $want // [], "kimi-bench prefix_repetition --seed $seed"
            . ($shuffle ? '' : ' --disable-shuffle') . " gives vLLM's prompts, token"
            . ' counts and output lengths');
    }
}

# ---- burstgpt: the same rows as vLLM (pandas' sample) for the same seed --------

{
    # a trace in BurstGPT's columns: GPT-4 and ChatGPT rows, some failed
    # (Response tokens 0), lengths that vary
    open my $csv, '>', "$dir/burst.csv" or die;
    print $csv "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n";
    for my $i (0 .. 59) {
        my $model = $i % 3 == 2 ? 'ChatGPT' : 'GPT-4';
        my ($req, $resp) = (20 + ($i * 37) % 300, $i % 7 == 3 ? 0 : 5 + ($i * 13) % 90);
        print $csv join(',', 5 * $i, $model, $req, $resp, $req + $resp, 'Conversation log'), "\n";
    }
    close $csv;
}

SKIP: {
    skip 'no python3, or tiktoken and numpy are not installable', 4
        unless python_modules('tiktoken', 'numpy');

    # vLLM's BurstGPTDataset: the GPT-4 rows with Response tokens > 0,
    # DataFrame.sample(n, random_state=seed) (pandas calls numpy's legacy
    # RandomState(seed).choice, with replacement when n exceeds the rows),
    # request i: ids (i + j) % vocab for Request tokens j, decoded
    write_vllm_common();
    write_vllm('burstgpt', <<'PY');
import csv, json, sys
import numpy as np
from vllm_common import enc, rest
path, seed, n = rest[0], int(rest[1]), int(rest[2])
with open(path) as f:
    rows = [r for r in csv.DictReader(f)
            if r['Model'] == 'GPT-4' and float(r['Response tokens']) > 0]
idx = np.random.RandomState(seed).choice(len(rows), size=n, replace=n > len(rows))
res = []
for i, k in enumerate(idx):
    n_in, n_out = int(rows[k]['Request tokens']), int(rows[k]['Response tokens'])
    res.append({'prompt': enc.decode([(i + j) % enc.n_vocab for j in range(n_in)]),
                'prompt_len': n_in, 'output_len': n_out})
json.dump(res, sys.stdout)
PY

    for my $case ([3, 12], [0, 70]) {
        my ($seed, $n) = @$case;
        same_as_vllm($n, "burstgpt --seed $seed" . ($n > 34 ? ' (more than the rows)' : ''),
            'burstgpt', ["$dir/burst.csv", $seed, $n],
            '--dataset-name', 'burstgpt', '--dataset-path', "$dir/burst.csv", '--seed', $seed);
    }
}

{
    open my $csv, '>', "$dir/notburst.csv" or die;
    print $csv "time,model,tokens\n1,GPT-4,3\n";
    close $csv;
    my $r = bench($dead, '--dataset-name', 'burstgpt', '--dataset-path', "$dir/notburst.csv",
        '--num-prompts', 2);
    like($r->{out}, qr/not BurstGPT's header/, 'burstgpt: a CSV without its columns is named');
    open $csv, '>', "$dir/badburst.csv" or die;
    print $csv "Timestamp,Model,Request tokens,Response tokens\n1,GPT-4,3,9\n2,GPT-4,x,4\n";
    close $csv;
    $r = bench($dead, '--dataset-name', 'burstgpt', '--dataset-path', "$dir/badburst.csv",
        '--num-prompts', 2);
    like($r->{out}, qr/badburst\.csv line 3: a field is missing or not a number/,
        'burstgpt: a bad row is named by its line');
}

# ---- sonnet and spec_bench: vLLM's SonnetDataset and SpecBench ------------------

# The vLLM references with a chat template: Kimi's rendered as transformers
# renders it (jinja2's sandbox, trim_blocks, lstrip_blocks), tokens counted
# as check.py's tiktoken counts them.
sub write_vllm_chat {
    write_vllm_common();
    write_vllm('chat', <<'PY');
from jinja2.sandbox import ImmutableSandboxedEnvironment
from vllm_common import enc, tokdir, rest
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                    extensions=['jinja2.ext.loopcontrols'])
tmpl = env.from_string(open(tokdir + '/chat_template.jinja').read())
def fmt(content):
    return tmpl.render(messages=[{'role': 'user', 'content': content}],
                       add_generation_prompt=True)
def count(text):
    return len(enc.encode(text, allowed_special='all'))
PY
}

# poem lines of varied length (vLLM ships Shakespeare's; any lines will do),
# some not ASCII, the last without its newline
{
    open my $fh, '>:utf8', "$dir/sonnet.txt" or die;
    for my $i (1 .. 40) {
        my $w = join ' ', map { (qw(when I do count the clock that tells time
            and see brave day sunk in hideous night), "\x{00e9}t\x{00e9}",
            "\x{5c71}")[($i * 7 + $_ * 3) % 19] } 1 .. 3 + $i % 9;
        print $fh ucfirst($w), ($i % 4 ? ',' : '.'), $i < 40 ? "\n" : '';
    }
    close $fh;
    # the same with Windows line ends and one old-Mac "\r": Python's text
    # mode reads each as "\n"
    my $text = do { local (@ARGV, $/) = "$dir/sonnet.txt"; <> };
    $text =~ s/\n/\r\n/g;
    $text =~ s/\r\n/\r/;
    open $fh, '>', "$dir/sonnet_crlf.txt" or die;
    print $fh $text;
    close $fh;
}

SKIP: {
    skip 'no python3, or tiktoken and jinja2 are not installable', 8
        unless python_modules('tiktoken', 'jinja2');

    # vLLM's SonnetDataset.sample
    write_vllm_chat();
    write_vllm('sonnet', <<'PY');
import json, random, sys
from vllm_chat import fmt, count, rest
path, seed, n = rest[0], int(rest[1]), int(rest[2])
input_len, prefix_len, output_len, chat = (int(x) for x in rest[3:7])
random.seed(seed)
data = open(path, encoding='utf-8').readlines()
avg = sum(count(l) for l in data) / len(data)
base = 'Pick as many lines as you can from these poem lines:\n'
off = count(fmt(base))
n_in = round((input_len - off) / avg)
n_pre = max(round((prefix_len - off) / avg), 0)
pre = data[:n_pre]
res = []
while len(res) < n:
    extra = random.choices(data, k=n_in - n_pre)
    prompt = base + ''.join(pre + extra)
    f = fmt(prompt)
    if count(f) <= input_len:
        res.append({'prompt': prompt if chat else f, 'prompt_len': count(f),
                    'output_len': output_len})
json.dump(res, sys.stdout)
PY

    # completions get the templated prompt, chat the prompt as it is; a
    # tight input length makes vLLM draw again
    for my $case ([0, 6, 550, 200, 150, 0], [9, 5, 300, 120, 33, 1],
                  [4, 8, 170, 0, 150, 0], [2, 3, 400, 150, 150, 0, 'sonnet_crlf'])
    {
        my ($seed, $n, $in, $pre, $out, $chat, $file) = @$case;
        $file = "$dir/" . ($file // 'sonnet') . '.txt';
        same_as_vllm($n, "sonnet --seed $seed, input $in, prefix $pre"
            . ($chat ? ', chat: the prompt as it is' : ', templated')
            . ($file =~ /crlf/ ? ', \\r\\n and \\r line ends' : ''),
            'sonnet', [$file, $seed, $n, $in, $pre, $out, $chat],
            '--dataset-name', 'sonnet', '--dataset-path', $file, '--seed', $seed,
            '--sonnet-input-len', $in, '--sonnet-prefix-len', $pre, '--sonnet-output-len', $out,
            ($chat ? ('--backend', 'openai-chat', '--endpoint', '/v1/chat/completions') : ()));
    }
}

{
    my $r = bench($dead, '--dataset-name', 'sonnet', '--dataset-path', "$dir/sonnet.txt",
        '--num-prompts', 2, '--sonnet-input-len', 10);
    like($r->{out}, qr/--sonnet-input-len 10 must be higher than the base prompt length \(\d+\)/,
        'sonnet: an input length under the instruction is refused, naming it');
    $r = bench($dead, '--dataset-name', 'sonnet', '--dataset-path', "$dir/nothing.txt",
        '--num-prompts', 2);
    like($r->{out}, qr/nothing\.txt: No such file/, 'sonnet: a missing file is named');

    # vLLM's general --input-len / --output-len set every dataset's own
    for my $ds (['sonnet', '--dataset-path', "$dir/sonnet.txt", '--input-len', 300],
                ['prefix_repetition', '--prefix-repetition-num-prefixes', 1])
    {
        my ($name, @more) = @$ds;
        unlink "$dir/gen.json";
        bench($dead, '--dataset-name', $name, @more, '--num-prompts', 2,
            '--output-len', 7, '--dump-prompts', "$dir/gen.json");
        my $d = eval { decode_json(do { local (@ARGV, $/) = "$dir/gen.json"; <> }) } // [];
        is(join(',', map { $_->{output_len} } @$d), '7,7', "--output-len sets $name\'s output length");
    }
}

SKIP: {
    skip 'no python3, or tiktoken is not installable', 6
        unless python_modules('tiktoken');

    # vLLM's TxtSlicesDataset: the whole text tokenized once, Python's
    # random seeded by --seed, each request a window from randint(0, n - 1)
    # cycling past the end, decoded (tiktoken replaces a split character
    # as transformers' decode of Kimi's tokenizer does), counted again
    write_vllm_common();
    write_vllm('txt', <<'PY');
import json, random, sys
from vllm_common import enc, rest
path, seed, n, in_len, out_len = rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4])
ids = enc.encode(open(path, encoding='utf-8').read(), allowed_special='all')
random.seed(seed)
res = []
for i in range(n):
    start = random.randint(0, len(ids) - 1)
    p = enc.decode([ids[(start + j) % len(ids)] for j in range(in_len)])
    res.append({'prompt': p, 'prompt_len': len(enc.encode(p, allowed_special='all')),
                'output_len': out_len})
json.dump(res, sys.stdout)
PY

    # the sonnet file as the text: short, so windows wrap around
    for my $case ([0, 4, 1024, 128], [21, 7, 333, 9], [5, 2, 1024, 128, 'sonnet_crlf']) {
        my ($seed, $n, $in, $out, $file) = @$case;
        $file = "$dir/" . ($file // 'sonnet') . '.txt';
        same_as_vllm($n, "txt-slices --seed $seed, $in tokens" . ($file =~ /crlf/ ? ', \\r\\n line ends' : ''),
            'txt', [$file, $seed, $n, $in, $out],
            '--dataset-name', 'txt-slices', '--dataset-path', $file, '--seed', $seed,
            ($in != 1024 ? ('--txt-slices-input-len', $in, '--txt-slices-output-len', $out) : ()));
    }
}

{
    my $r = bench($dead, '--dataset-name', 'txt-slices', '--dataset-path',
        'https://example.com/book.txt', '--num-prompts', 2);
    like($r->{out}, qr/a URL \(vLLM downloads it; download it and pass the file\)/,
        'txt-slices: a URL is refused, saying why');
}

# Spec-Bench's question.jsonl: rows of categories with their turns
{
    open my $fh, '>', "$dir/question.jsonl" or die;
    for my $i (0 .. 11) {
        print $fh encode_json({ question_id => $i, category => (qw(writing math coding))[$i % 3],
            turns => [ "Question $i: " . ('why ' x ($i + 1)) . '?', 'and a second turn' ] }), "\n";
    }
    close $fh;
}

SKIP: {
    skip 'no python3, or tiktoken and jinja2 are not installable', 6
        unless python_modules('tiktoken', 'jinja2');

    # vLLM's SpecBench: the first turns (of a category), shuffled by
    # Python's random at seed 0 (get_samples gives it no --seed), then as
    # CustomDataset: through the chat template, oversampled by
    # random.choice after reseeding
    write_vllm_chat();
    write_vllm('spec', <<'PY');
import json, random, sys
from vllm_chat import fmt, count, rest
path, n, out_len, cat = rest[0], int(rest[1]), int(rest[2]), rest[3]
rows = [json.loads(l) for l in open(path) if l.strip()]
data = [r['turns'][0] for r in rows if cat == '-' or r['category'] == cat]
random.seed(0)
random.shuffle(data)
res = [{'prompt': fmt(p), 'prompt_len': count(fmt(p)), 'output_len': out_len}
       for p in data[:n]]
if len(res) < n:
    random.seed(0)
    res += [dict(random.choice(res)) for _ in range(n - len(res))]
json.dump(res, sys.stdout)
PY

    for my $case ([5, 256, '-', 3], [6, 40, 'math', 9], [2, 17, 'coding', 0]) {
        my ($n, $out, $cat, $seed) = @$case;
        same_as_vllm($n, "spec_bench category $cat, --seed $seed"
            . ($n > 4 && $cat ne '-' ? ' (oversampled)' : ''),
            'spec', ["$dir/question.jsonl", $n, $out, $cat],
            '--dataset-name', 'spec_bench', '--dataset-path', "$dir/question.jsonl", '--seed', $seed,
            ($out != 256 ? ('--spec-bench-output-len', $out) : ()),
            ($cat ne '-' ? ('--spec-bench-category', $cat) : ()));
    }
}

{
    open my $fh, '>', "$dir/badspec.jsonl" or die;
    print $fh encode_json({ category => 'math', turns => ['fine'] }), "\n",
        encode_json({ category => 'math', question => 'no turns' }), "\n";
    close $fh;
    my $r = bench($dead, '--dataset-name', 'spec_bench', '--dataset-path', "$dir/badspec.jsonl",
        '--num-prompts', 2);
    like($r->{out}, qr/badspec\.jsonl:2: no "turns" list starting with a string/,
        'spec_bench: a row without turns is named by its line');
}

my $few = `$bench --model m --tokenizer $tokdir --dataset-name prefix_repetition --num-prompts 3 --prefix-repetition-num-prefixes 4 2>&1`;
is($? >> 8, 2, 'prefix_repetition with fewer prompts than prefixes: exit 2');
like($few, qr/--num-prompts \(3\) must be at least --prefix-repetition-num-prefixes \(4/,
    'with vLLM\'s rule in the message');

# ---- ready check and plot ---------------------------------------------------

SKIP: {
    skip 'gnuplot is not installed', 3
        unless `command -v gnuplot 2>/dev/null` ne '';

    $s = fake_server(ttft_ms => 5, delay_ms => 5);
    $b = bench($s->{port}, '--num-prompts', 4, '--ready-check-timeout-sec', 5,
        '--plot', "$dir/plot.png");
    fake_stop($s);
    like($b->{out}, qr/Initial test run completed\./, 'ready check passes');
    ok(-s "$dir/plot.png", 'plot written');
    open my $fh, '<:raw', "$dir/plot.png";
    read $fh, my $magic, 4;
    is($magic, "\x89PNG", 'and it is a PNG');
}

# ---- --goodput and --num-warmups ------------------------------------------------

{
    # TTFT 60 ms, TPOT 20 ms, E2EL 60 + 24 x 20 = 540 ms for every request
    my $s4 = fake_server(ttft_ms => 60, delay_ms => 20);
    my $g = bench($s4->{port}, '--num-prompts', 4, '--goodput', 'ttft:300',
        'tpot:40', 'e2el:2000', '--num-warmups', 3,
        '--ready-check-timeout-sec', 5);
    my $st4 = fake_stop($s4);
    like($g->{out}, qr/^Request goodput \(req\/s\):\s+[0-9.]+\s*$/m,
        'goodput is reported after request throughput');
    ok(within($g->{r}{request_goodput}, $g->{r}{request_throughput}, 1e-9),
        'every request within ttft:300 tpot:40 e2el:2000: goodput = '
        . 'throughput') or diag $g->{out};
    like($g->{out}, qr/Warming up with 3 requests\.\.\.\nWarmup run completed\./,
        '--num-warmups says so');
    is($st4->{requests}, 1 + 3 + 4,
        'the test request, 3 warmups and the 4 measured ones were sent');
    is($g->{r}{completed}, 4, 'warmups are not counted');

    $s4 = fake_server(ttft_ms => 60, delay_ms => 20);
    $g = bench($s4->{port}, '--num-prompts', 4, '--goodput=tpot:10',
        '--header', 'x-bench-extra=0.3.3', 'x-tenant=blue', '--metadata',
        'gpu=h200', 'run=7', '--input-len', 16);
    $st4 = fake_stop($s4);
    is($g->{r}{request_goodput}, 0, 'tpot:10 against 20 ms: goodput 0');
    is($st4->{extra}, 4, '--header KEY=VALUE ... on every request');
    ok($g->{r}{gpu} eq 'h200' && $g->{r}{run} eq '7',
        '--metadata KEY=VALUE ... in the result');
    is($g->{r}{total_input_tokens}, 4 * 16, '--input-len sets the random '
        . 'dataset\'s length');

    # --append-result: one JSON document more per run
    my $file = "$dir/append.json";
    unlink $file;
    for (1 .. 2) {
        $s4 = fake_server(ttft_ms => 5, delay_ms => 1);
        system("$bench --model fake --tokenizer $tokdir --port $s4->{port} "
            . "--num-prompts 2 --random-input-len 8 --random-output-len 4 "
            . "--ready-check-timeout-sec 0 --disable-tqdm --append-result "
            . "--result-filename $file >/dev/null 2>&1");
        fake_stop($s4);
    }
    my @docs = grep { /\S/ } split /\n/, do { local (@ARGV, $/) = $file; <> };
    is(scalar @docs, 2, '--append-result: two runs, two lines');
    is(decode_json($docs[1])->{completed}, 2, 'each a whole result');
    $g = bench(1, '--goodput', 'itl:10');
    like($g->{out}, qr/--goodput "itl:10": expected KEY:VALUE/,
        'an unknown goodput key');
    $g = bench(1, '--goodput', 'ttft:-1');
    like($g->{out}, qr/must be a number of milliseconds/, 'a negative SLO');
}

# ---- --ramp-up-strategy ---------------------------------------------------------

{
    # linear 2 -> 20 RPS over 8 requests with constant gaps (burstiness
    # inf): request i leaves at sum_{j <= i} 1 / rate_j, the last at ~1.22 s
    my $s5 = fake_server(ttft_ms => 5, delay_ms => 1);
    my $g = bench($s5->{port}, '--num-prompts', 8, '--ramp-up-strategy',
        'linear', '--ramp-up-start-rps', 2, '--ramp-up-end-rps', 20,
        '--burstiness', 'inf');
    fake_stop($s5);
    my $want = 0;
    $want += 1 / (2 + 18 * $_ / 7) for 0 .. 7;
    ok($g->{r}{duration} > $want - 0.05 && $g->{r}{duration} < $want + 0.4,
        sprintf('linear ramp: the last request leaves at %.2f s', $want))
        or diag "duration $g->{r}{duration}\n$g->{out}";
    like($g->{out}, qr/Traffic ramp-up strategy: linear\. Will increase RPS from 2\.0 to 20\.0/,
        'the ramp is announced as vLLM does');
    is($g->{r}{ramp_up_strategy}, 'linear', 'and saved in the result');
    $g = bench(1, '--ramp-up-strategy', 'linear', '--ramp-up-start-rps', 5,
        '--ramp-up-end-rps', 2);
    like($g->{out}, qr/needs 0 < --ramp-up-start-rps <= --ramp-up-end-rps/,
        'a falling ramp is refused');
}

# ---- the file datasets: ShareGPT and custom, chosen as vLLM chooses ----------

SKIP: {
    skip 'python3 is not installed', 9
        if system('command -v python3 >/dev/null 2>&1') != 0;

    # 30 two-turn conversations that pass vLLM's filters, a one-turn one
    # (dropped before the shuffle), a 1-token prompt and a ~2000-token one
    # (skipped after it)
    my @conv;
    for my $k (0 .. 29) {
        push @conv, { conversations => [
            { from => 'human', value => "Question number $k: what is "
                . "the capital of country $k, please?" },
            { from => 'gpt', value => "The capital of country $k is a city "
                . ('with a long history ' x ($k % 5 + 1)) } ] };
    }
    splice @conv, 3, 0, { conversations => [ { value => 'only one turn' } ] };
    splice @conv, 7, 0, { conversations => [ { value => 'hi' },
        { value => 'hello there friend' } ] };
    splice @conv, 11, 0, { conversations => [ { value => 'word ' x 2000 },
        { value => 'a reply of some words' } ] };
    open my $fh, '>', "$dir/sharegpt.json" or die;
    print $fh encode_json(\@conv);
    close $fh;

    # vLLM's selection: the entries with two turns, random.seed(seed),
    # random.shuffle, skip what its filters refuse, take N; then oversample
    # with random.choice after reseeding (the skipped prompts are known)
    write_vllm('sharegpt', <<'PY');
import json, random, sys
path, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = [e for e in json.load(open(path)) if len(e['conversations']) >= 2]
random.seed(seed)
random.shuffle(data)
out = []
for e in data:
    if len(out) >= n:
        break
    p = e['conversations'][0]['value']
    if p == 'hi' or p.startswith('word word'):
        continue
    out.append(p)
if len(out) < n:
    random.seed(seed)
    out += [random.choice(out) for _ in range(n - len(out))]
print(json.dumps(out))
PY

    for my $case ([ 5, 12 ], [ 0, 40 ]) {
        my ($seed, $n) = @$case;
        unlink "$dir/sg.json";
        bench($dead, '--dataset-name', 'sharegpt', '--dataset-path',
            "$dir/sharegpt.json", '--num-prompts', $n, '--seed', $seed,
            '--dump-prompts', "$dir/sg.json");
        my $ours = -f "$dir/sg.json"
            ? decode_json(do { local (@ARGV, $/) = "$dir/sg.json"; <> }) : [];
        my $want = decode_json(
            `python3 $dir/vllm_sharegpt.py $dir/sharegpt.json $seed $n`);
        is_deeply([ map { $_->{prompt} } @$ours ], $want,
            "sharegpt, seed $seed, $n prompts: vLLM's choice and order"
            . ($n > 30 ? ' (oversampled)' : ''));
    }
    my $sg = decode_json(do { local (@ARGV, $/) = "$dir/sg.json"; <> });
    my ($q7) = grep { $_->{prompt} =~ /number 7:/ } @$sg;
    ok($q7 && $q7->{output_len} > 12 && $q7->{prompt_len} > 12,
        'output_len is the reply\'s token count, prompt_len the prompt\'s');

    bench($dead, '--dataset-name', 'sharegpt', '--dataset-path',
        "$dir/sharegpt.json", '--num-prompts', 4, '--sharegpt-output-len', 77,
        '--disable-shuffle', '--dump-prompts', "$dir/sg2.json");
    my $sg2 = decode_json(do { local (@ARGV, $/) = "$dir/sg2.json"; <> });
    is_deeply([ map { $_->{output_len} } @$sg2 ], [ 77, 77, 77, 77 ],
        '--sharegpt-output-len');
    like($sg2->[0]{prompt}, qr/number 0:/, '--disable-shuffle keeps the order');

    my $r = bench($dead, '--dataset-name', 'sharegpt', '--dataset-path',
        "$dir/sharegpt.json", '--num-prompts', 40, '--no-oversample');
    like($r->{out}, qr/gives 30 requests of the 40 asked for/,
        '--no-oversample: short is an error');

    # custom: JSON lines, each prompt through the chat template
    open $fh, '>', "$dir/custom.jsonl" or die;
    print $fh encode_json({ prompt => "custom prompt $_" }), "\n" for 0 .. 9;
    close $fh;
    bench($dead, '--dataset-name', 'custom', '--dataset-path',
        "$dir/custom.jsonl", '--num-prompts', 3, '--dump-prompts',
        "$dir/cu.json");
    my $cu = decode_json(do { local (@ARGV, $/) = "$dir/cu.json"; <> });
    like($cu->[0]{prompt} // '', qr/<\|im_user\|>.*custom prompt \d.*<\|im_assistant\|>/s,
        'custom: the prompt in the chat template');
    is($cu->[0]{output_len}, 256, 'custom: output 256 by default');
    bench($dead, '--dataset-name', 'custom', '--dataset-path',
        "$dir/custom.jsonl", '--num-prompts', 3, '--custom-skip-chat-template',
        '--custom-output-len', 9, '--dump-prompts', "$dir/cu2.json");
    $cu = decode_json(do { local (@ARGV, $/) = "$dir/cu2.json"; <> });
    ok(($cu->[0]{prompt} // '') =~ /^custom prompt \d$/
        && $cu->[0]{output_len} == 9,
        '--custom-skip-chat-template, --custom-output-len');
}

# ---- bad dataset arguments -------------------------------------------------------

{
    my $r = bench(1, '--dataset-name', 'sharegpt');
    like($r->{out}, qr/needs --dataset-path/, 'sharegpt without a path');
    $r = bench(1, '--dataset-name', 'random-mm', '--dataset-path', '/x');
    like($r->{out}, qr/not supported \(random, sharegpt, custom, prefix_repetition, burstgpt, sonnet, spec_bench, txt-slices\)/,
        'an unknown dataset name');
    open my $fh, '>', "$dir/bad.jsonl" or die;
    print $fh qq({"prompt": "fine"}\n{"text": "no prompt"}\n);
    close $fh;
    $r = bench(1, '--dataset-name', 'custom', '--dataset-path',
        "$dir/bad.jsonl", '--custom-skip-chat-template');
    like($r->{out}, qr/bad\.jsonl:2: no "prompt" string/,
        'a line without a prompt: file and line');
    $r = bench(1, '--dataset-name', 'sharegpt', '--dataset-path',
        "$dir/nope.json");
    like($r->{out}, qr/nope\.json/, 'a missing file is named');
}

# a sanitizer build (CC=clang CFLAGS=-fsanitize=...) reports here
unlike($all_out, qr/AddressSanitizer|LeakSanitizer|runtime error:/,
    'no sanitizer report from any run');

done_testing();
