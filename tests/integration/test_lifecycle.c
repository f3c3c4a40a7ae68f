/* test_lifecycle.c - being written. */
int main(void)
{
    return 0;
}
