/* db/schema.sql, embedded into the binary at compile time (the assembler reads
 * the file relative to the repository root, where make runs), so the schema a
 * database gets is exactly the documented one. */
#include "db.h"

__asm__(".section .rodata\n"
        ".global plab_schema_sql_text\n"
        ".type plab_schema_sql_text, @object\n"
        "plab_schema_sql_text:\n"
        ".incbin \"db/schema.sql\"\n"
        ".byte 0\n"
        ".previous\n");

extern const char plab_schema_sql_text[];

const char *db_schema_sql(void) { return plab_schema_sql_text; }
