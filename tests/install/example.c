/*
 * example.c - a program built only from what `cmake --install` puts in
 * place, through pkg-config: checks that the header, the library and
 * meshsync.pc are usable by an application. Given a socket where nothing
 * listens, it must report an "io" error kept on the handle.
 */
#include <meshsync.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    meshsync_t *ms = meshsync_connect(argc > 1 ? argv[1] : NULL);
    const char *code = meshsync_errcode(ms);
    int ok = code != NULL && strcmp(code, "io") == 0;

    printf("%s: %s\n", code ? code : "(none)", meshsync_errmsg(ms));
    meshsync_free(ms);
    return ok ? 0 : 1;
}
