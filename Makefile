# trail — plain Makefile.
#   make            build library and programs into build/
#   make check      install missing packages, build, run the test suite
#   make check-full the long tests as well
#   make demo       install missing packages, build, run the whole pipeline
#   make asan|ubsan the test suite under AddressSanitizer / UBSan
#   make fuzz       build libFuzzer harnesses (clang) into build/fuzz/
#   make bench      benchmarks; figures go to bench/RESULTS.md
#   make install PREFIX=/usr/local DESTDIR=
# Variables: CC, CFLAGS, LDFLAGS, PREFIX, DESTDIR, V=1 (echo commands),
# DEVELOPER=1 (-Werror), B (build directory).

CC ?= cc
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCDIR ?= $(PREFIX)/include/trail
MANDIR ?= $(PREFIX)/share/man
B ?= build

PKGS := libjansson-dev libarchive-dev libxxhash-dev libopenblas-dev liblapacke-dev \
	libcurl4-openssl-dev libsodium-dev libmicrohttpd-dev libdnnl-dev pkg-config mandoc zsh fish
# check-full also uses these: PyTorch and NumPy references, Chromium for the report,
# a one-node Slurm cluster for examples/slurm (tests/cli/slurm.sh, as root), and
# Debian's text corpora of the attribution benchmarks (bench/eval/quality.sh).
FULL_PKGS := python3-torch python3-numpy chromium slurm-wlm munge fortunes dict-foldoc dict-wn
# and node with npm for the GPT-2 tokenizer reference (tests/cli/bpe-reference.sh),
# installed only when the commands are missing: a nodejs that bundles npm
# conflicts with Debian's npm package.
NODE_PKGS := nodejs npm
PKGCONFIG_LIBS := jansson libarchive libsodium libcurl libmicrohttpd

CFLAGS ?= -O2 -g
WARN := -Wall -Wextra -Wno-unused-parameter -Wshadow -Wvla
ifeq ($(DEVELOPER),1)
WARN += -Werror
endif
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -pthread $(WARN) -Ilib \
	$(shell pkg-config --cflags $(PKGCONFIG_LIBS) 2>/dev/null) \
	-I/usr/include/x86_64-linux-gnu/openblas-pthread $(CFLAGS)
LIBS = $(shell pkg-config --libs $(PKGCONFIG_LIBS) 2>/dev/null) \
	-ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
ALL_LDFLAGS = $(LDFLAGS)

ifneq ($(V),1)
Q = @
QCC = @echo "  CC    $@";
QLD = @echo "  LD    $@";
QAR = @echo "  AR    $@";
endif

LIB_SRC := $(sort $(wildcard lib/*/*.c))
LIB_OBJ := $(LIB_SRC:lib/%.c=$(B)/lib/%.o)
CMD_SRC := $(sort $(wildcard cmd/*.c))
PROGS := $(CMD_SRC:cmd/%.c=$(B)/bin/%)
TEST_SRC := $(sort $(wildcard tests/unit/test_*.c))
TESTS := $(TEST_SRC:tests/unit/%.c=$(B)/tests/%)
FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_REPLAY := $(FUZZ_SRC:tests/fuzz/%.c=$(B)/tests/%_replay)
HEADERS := lib/trail.h $(wildcard lib/*/*.h)
# What users include: the umbrella and one header per subsystem (not the *_int.h).
# Headers of earlier releases, installed as one-line forwarders so that their users still build.
COMPAT_HEADERS := util.h=core/core.h json.h=core/core.h cli.h=core/core.h \
	key.h=ledger/ledger.h merkle.h=ledger/ledger.h store.h=ledger/ledger.h ledger.h=ledger/ledger.h \
	bundle.h=data/data.h source.h=data/data.h validate.h=data/data.h datanet.h=data/data.h \
	model.h=model/model.h tokenizer.h=model/model.h safetensors.h=model/model.h infer.h=model/model.h \
	train.h=job/job.h span.h=attr/attr.h attr.h=attr/attr.h serve.h=serve/serve.h \
	settle.h=settle/settle.h report.h=report/report.h
PUBLIC_HEADERS := lib/trail.h $(filter-out %_int.h,$(wildcard lib/*/*.h))

.PHONY: all deps deps-full install-pkgs check check-full demo asan ubsan fuzz bench install uninstall \
	clean completions man-lint unicode-tab
.DELETE_ON_ERROR:

all: $(B)/libtrail.a $(PROGS) $(B)/trail.pc

$(B)/lib/%.o: lib/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(QCC)$(CC) $(ALL_CFLAGS) -fPIC -c -o $@ $<

$(B)/libtrail.a: $(LIB_OBJ)
	@rm -f $@
	$(QAR)$(AR) rcs $@ $^

$(B)/bin/%: cmd/%.c $(B)/libtrail.a $(HEADERS)
	@mkdir -p $(@D)
	$(QLD)$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< $(B)/libtrail.a $(LIBS)

$(B)/tests/%: tests/unit/%.c tests/unit/tap.h $(B)/libtrail.a $(HEADERS)
	@mkdir -p $(@D)
	$(QLD)$(CC) $(ALL_CFLAGS) -Itests/unit $(ALL_LDFLAGS) -o $@ $< $(B)/libtrail.a $(LIBS)

$(B)/tests/%_replay: tests/fuzz/%.c tests/fuzz/replay.c $(B)/libtrail.a $(HEADERS)
	@mkdir -p $(@D)
	$(QLD)$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< tests/fuzz/replay.c $(B)/libtrail.a $(LIBS)

# A static HTTP server that misbehaves on purpose (tests/cli/tiles.sh).
$(B)/tests/hostile-http: tests/tools/hostile-http.c
	@mkdir -p $(@D)
	$(QLD)$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< $(LIBS)

# A Hugging Face model directory as a GGUF file (tests/cli/gguf.sh, llama.cpp peers).
$(B)/tests/st2gguf: tests/tools/st2gguf.c $(B)/libtrail.a $(HEADERS)
	@mkdir -p $(@D)
	$(QLD)$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< $(B)/libtrail.a $(LIBS)

$(B)/tests/faultinject.so: tests/unit/faultinject.c
	@mkdir -p $(@D)
	$(QLD)$(CC) $(ALL_CFLAGS) -shared -fPIC -o $@ $< -ldl

# libtrail is a static library, so what it links against every program links too:
# Requires and Libs, not their .private forms (which --static would need, with every
# dependency's own static libraries installed).
$(B)/trail.pc: FORCE
	@mkdir -p $(@D)
	@printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(LIBDIR)' 'includedir=$(PREFIX)/include' '' \
	  'Name: trail' 'Description: signed datasets, Merkle ledger, training and attribution' \
	  'Version: 0.1.0' 'Requires: $(PKGCONFIG_LIBS)' \
	  'Libs: -L$${libdir} -ltrail -ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread' \
	  'Cflags: -I$${includedir}/trail' > $@

# Install the Debian packages of SPEC §2 when they are missing.
deps:
	@$(MAKE) --no-print-directory install-pkgs P="$(PKGS)"

deps-full:
	@$(MAKE) --no-print-directory install-pkgs \
	  P="$(PKGS) $(FULL_PKGS) $$(command -v node >/dev/null && command -v npm >/dev/null || echo $(NODE_PKGS))"

install-pkgs:
	@missing=""; for p in $(P); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	  else \
	    echo "trail: missing packages:$$missing" >&2; \
	    echo "trail: install them with: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

test-build: all $(TESTS) $(FUZZ_REPLAY) $(B)/tests/faultinject.so $(B)/tests/hostile-http $(B)/tests/st2gguf
.PHONY: test-build

check: deps
	@$(MAKE) --no-print-directory test-build
	@echo "running the test suite (about 10 minutes on 2 cores; B=$(B) sh tests/run PATTERN runs a part)"
	@B=$(B) sh tests/run

check-full: deps-full
	@$(MAKE) --no-print-directory test-build
	@echo "running the full test suite (long tests included: well over 10 minutes on 2 cores)"
	@B=$(B) TRAIL_FULL=1 sh tests/run

asan:
	@TRAIL_SANITIZER=AddressSanitizer $(MAKE) --no-print-directory B=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer" \
	  LDFLAGS="-fsanitize=address,undefined" check

ubsan:
	@$(MAKE) --no-print-directory B=build-ubsan CFLAGS="-O1 -g -fsanitize=undefined -fno-sanitize-recover=undefined" \
	  LDFLAGS="-fsanitize=undefined" check

fuzz:
	@$(MAKE) --no-print-directory B=build-fuzz CC=clang CFLAGS="-O1 -g -fsanitize=address,undefined,fuzzer-no-link" \
	  LDFLAGS="-fsanitize=address,undefined" all
	@mkdir -p build-fuzz/fuzz
	@for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  echo "  LD    build-fuzz/fuzz/$$n"; \
	  clang -std=c11 -D_GNU_SOURCE -Ilib -O1 -g -fsanitize=address,undefined,fuzzer \
	    -o build-fuzz/fuzz/$$n $$f build-fuzz/libtrail.a $(LIBS) || exit 1; done

demo: deps all
	@sh examples/demo.sh

bench: all
	@sh bench/run

completions: all
	@for p in $(PROGS); do n=$$(basename $$p); \
	  $$p --completion bash > completions/$$n.bash; \
	  $$p --completion zsh > completions/_$$n; \
	  $$p --completion fish > completions/$$n.fish; done

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR) \
	  $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man7 \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions \
	  $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	install -m 755 $(PROGS) $(DESTDIR)$(BINDIR)/
	install -m 644 $(B)/libtrail.a $(DESTDIR)$(LIBDIR)/
	install -m 644 $(B)/trail.pc $(DESTDIR)$(LIBDIR)/pkgconfig/
	for h in $(PUBLIC_HEADERS); do d=$${h#lib/}; install -d $(DESTDIR)$(INCDIR)/$$(dirname $$d); \
	  install -m 644 $$h $(DESTDIR)$(INCDIR)/$$d; done
	for m in $(COMPAT_HEADERS); do printf '/* %s moved to %s */\n#include "%s"\n' \
	  $${m%%=*} $${m#*=} $${m#*=} > $(DESTDIR)$(INCDIR)/$${m%%=*}; done
	for m in man/*.1; do [ -e "$$m" ] && install -m 644 $$m $(DESTDIR)$(MANDIR)/man1/; done; true
	for m in man/*.5; do [ -e "$$m" ] && install -m 644 $$m $(DESTDIR)$(MANDIR)/man5/; done; true
	for m in man/*.7; do [ -e "$$m" ] && install -m 644 $$m $(DESTDIR)$(MANDIR)/man7/; done; true
	for c in completions/*.bash; do [ -e "$$c" ] && install -m 644 $$c \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions/$$(basename $$c .bash); done; true
	for c in completions/_*; do [ -e "$$c" ] && install -m 644 $$c $(DESTDIR)$(PREFIX)/share/zsh/site-functions/; done; true
	for c in completions/*.fish; do [ -e "$$c" ] && install -m 644 $$c $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/; done; true

uninstall:
	for p in $(PROGS); do rm -f $(DESTDIR)$(BINDIR)/$$(basename $$p); done
	rm -f $(DESTDIR)$(LIBDIR)/libtrail.a $(DESTDIR)$(LIBDIR)/pkgconfig/trail.pc
	rm -rf $(DESTDIR)$(INCDIR)
	for m in man/*.[157]; do rm -f $(DESTDIR)$(MANDIR)/man$${m##*.}/$$(basename $$m); done
	for p in $(PROGS); do n=$$(basename $$p); \
	  rm -f $(DESTDIR)$(PREFIX)/share/bash-completion/completions/$$n \
	    $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_$$n \
	    $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/$$n.fish; done

# The letter, number and space classes of the GPT-2 tokenizer, from Debian's unicode-data.
unicode-tab:
	@$(MAKE) --no-print-directory install-pkgs P=unicode-data
	sh lib/model/unicode_tab.sh > lib/model/unicode_tab.c.tmp && mv lib/model/unicode_tab.c.tmp lib/model/unicode_tab.c

man-lint:
	@for m in man/*.[157]; do mandoc -Tlint -Wwarning $$m || exit 1; done

clean:
	rm -rf build build-asan build-ubsan build-fuzz

FORCE:
