#!/usr/bin/perl

# Source rules of the nginx module that a test of each path would catch
# only by luck: an error message given as a C string literal and its
# length (the module's error helpers take both, nginx style) must agree.
# A length one too long sends the literal's NUL inside the JSON message, a
# short one cuts the message.  Every call whose arguments hold a string
# literal (possibly split over lines) followed by an integer is checked.

use strict;
use warnings;

use Test::More;

my @files = sort glob('ngx_http_kimi_module/*.c');
plan(skip_all => 'no ngx_http_kimi_module/ (run from the repository root)')
    unless @files;

my $checked = 0;

for my $file (@files) {
    open(my $fh, '<', $file) or die "$file: $!";
    my $src = do { local $/; <$fh> };
    close($fh);

    # calls of the error helpers: ngx_http_kimi_*_error(...) and
    # ngx_http_kimi_text_answered(ctx, ngx_http_kimi_send_error(...))
    while ($src =~ /\bngx_http_kimi_\w*error\s*\(/g) {
        my $start = pos($src);
        my ($depth, $i) = (1, $start);
        while ($depth && $i < length($src)) {
            my $c = substr($src, $i++, 1);
            if ($c eq '"') {              # skip a literal: parentheses in it
                while ($i < length($src)) {
                    my $d = substr($src, $i++, 1);
                    last if $d eq '"';
                    $i++ if $d eq '\\';
                }
                next;
            }
            $depth++ if $c eq '(';
            $depth-- if $c eq ')';
        }
        my $args = substr($src, $start, $i - $start - 1);
        my $line = 1 + (substr($src, 0, $start) =~ tr/\n//);

        while ($args =~ /((?:"(?:[^"\\]|\\.)*"\s*)+),\s*(\d+)\s*(?=[,)]|$)/g) {
            my ($lits, $len) = ($1, $2);
            my $text = join('', $lits =~ /"((?:[^"\\]|\\.)*)"/g);
            $text =~ s/\\(["\\])/$1/g;
            $text =~ s/\\n/\n/g;
            $checked++;
            is(length($text), $len, "$file:$line: \"$text\" is $len bytes");
        }
    }
}

cmp_ok($checked, '>=', 10, "error literals checked ($checked)");

done_testing();
