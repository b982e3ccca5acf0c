#!/usr/bin/perl

# vLLM's --chat-template as kimi_chat_template: a file (a name relative to
# the configuration's directory) or a template given in one line replaces
# the model's own for chat requests and /tokenize of messages; nginx -t
# refuses a missing file or a template that does not compile, saying why.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(chat_body);

my $true = JSON::PP::true;
my $false = JSON::PP::false;

sub rendered_ids {
    my ($t, @messages) = @_;
    my $r = $t->post('/tokenize', { messages => \@messages,
        add_generation_prompt => $true });
    return $r->{json}{tokens};
}

sub prompt_ids {
    my ($t, $text) = @_;
    return $t->post('/tokenize', { prompt => $text,
        add_special_tokens => $false })->{json}{tokens};
}

# ---- a file, named relative to the configuration -------------------------------

my $t = KimiTest->new(workers => 1, http_conf => 'kimi_chat_template tmpl.jinja;');
KimiTest::write_file($t->dir . '/tmpl.jinja',
    "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}\n"
    . "{% endfor %}{% if add_generation_prompt %}<<assistant>>{% endif %}");
$t->start;
my @msgs = ({ role => 'system', content => 'be brief' },
            { role => 'user', content => 'hello there' });
is_deeply(rendered_ids($t, @msgs),
    prompt_ids($t, "<<system>>be brief\n<<user>>hello there\n<<assistant>>"),
    'a file: messages render through it');
my $r = $t->post('/v1/chat/completions', chat_body(content => 'hello there',
    max_tokens => 3, ignore_eos => $true));
is($r->{status}, 200, 'a file: chat: 200');
is($r->{json}{usage}{prompt_tokens},
    scalar @{ prompt_ids($t, "<<user>>hello there\n<<assistant>>") },
    'a file: the chat prompt is its rendering');
$t->stop;

# ---- a template in one line -------------------------------------------------------

$t = KimiTest->new(workers => 1, http_conf => q<kimi_chat_template
    '{% for m in messages %}[{{ m.content }}]{% endfor %}';>);
$t->start;
is_deeply(rendered_ids($t, { role => 'user', content => 'a' },
                           { role => 'assistant', content => 'b' }),
    prompt_ids($t, '[a][b]'), 'inline: messages render through it');
$t->stop;

# ---- what nginx -t refuses ------------------------------------------------------------

my $module = $t->{module};
$module = "$ENV{PWD}/$module" unless $module =~ m{^/};
my $d = $t->dir;
for my $case ([ "$d/missing.jinja", qr/missing\.jinja: No such file/,
                'a missing file' ],
              [ q<'{% for m in %}x{% endfor %}'>, qr/kimi_chat_template/,
                'a template that does not compile' ]) {
    my ($value, $why, $what) = @$case;
    KimiTest::write_file("$d/t.conf", "load_module $module;\nevents {}\n"
        . "http { kimi_chat_template $value; }\n");
    my $out = `$t->{nginx_bin} -t -p $d/ -c $d/t.conf -e $d/t.log 2>&1`;
    isnt($? >> 8, 0, "nginx -t refuses $what");
    like($out, $why, 'saying why') or diag($out);
}

done_testing();
